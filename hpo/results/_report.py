"""Rendering an evaluation: the comparison table, report.md and the PNG plots.

Pure presentation of the dict `hpo.results.evaluate` builds; nothing here computes a metric.
Plots use matplotlib's Agg backend so they render on headless nodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hpo.search import SELECTED_ON
from hpo.train import CLASS_METRICS, shown_params
from pipeline.manifest import LABELS

__all__ = [
    "comparison_rows",
    "comparison_table",
    "confidence_section",
    "estimates_section",
    "plot_confusion",
    "plot_fold_accuracy",
    "plot_history",
    "plot_importances",
    "render_markdown",
    "rescore_table",
]

_CLASS_NAMES = {"cov": "COVID-19", "pne": "pneumonia", "reg": "healthy"}


def plus_minus(stats: dict | None) -> str:
    """``mean ± std`` of a summary entry (``–`` when it has no finite mean)."""
    if not stats or stats.get("mean") is None or not math.isfinite(stats["mean"]):
        return "–"
    if stats.get("std") is None:
        return f"{stats['mean']:.3f}"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _delta(ours: dict | None, theirs: dict | None) -> str:
    if not ours or not theirs:
        return "–"
    d = ours["mean"] - theirs["mean"]
    return "–" if not math.isfinite(d) else f"{d:+.3f}"


def comparison_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(metric, ours, paper, delta) rows: accuracy, then each class's four metrics."""
    ours, paper = report["ours"], report.get("paper")
    rows = [("accuracy", plus_minus(ours["accuracy"]), plus_minus(paper and paper["accuracy"]), "")]
    rows[0] = (*rows[0][:3], _delta(ours["accuracy"], paper and paper["accuracy"]))
    for cls in LABELS:
        for metric in CLASS_METRICS:
            mine = ours["per_class"][cls][metric]
            theirs = paper["per_class"][cls][metric] if paper else None
            rows.append(
                (f"{cls} {metric}", plus_minus(mine), plus_minus(theirs), _delta(mine, theirs))
            )
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def comparison_table(report: dict) -> str:
    """Ours vs the paper's evaluation.csv row for the same backbone and N, and the headline."""
    label = report["model_label"]
    paper_name = f"paper {label}" if report.get("paper") else f"paper {label} (no row)"
    ours = f"ours {label} ({_selected(report)})"
    main = _table(("metric", ours, paper_name, "Δ ours−paper"), comparison_rows(report))
    head = report["headline"]
    headline = _table(
        ("headline", ours, f"paper {head['model_label']}", "Δ"),
        [
            (
                "accuracy",
                plus_minus(head["ours_accuracy"]),
                plus_minus(head["accuracy"]),
                _delta(head["ours_accuracy"], head["accuracy"]),
            ),
            (
                "cov recall",
                plus_minus(head["ours_cov_recall"]),
                plus_minus(head["cov_recall"]),
                _delta(head["ours_cov_recall"], head["cov_recall"]),
            ),
        ],
    )
    return f"{main}\n\n{headline}"


def _support_section(report: dict) -> str:
    rows = []
    for cls in LABELS:
        entry = report["support_aware"][cls]
        zero = entry["zero_support_folds"]
        flag = ", ".join(f"fold {i}" for i in zero) if zero else "none"
        for metric in CLASS_METRICS:
            rows.append(
                (
                    f"{cls} {metric}",
                    plus_minus(report["ours"]["per_class"][cls][metric]),
                    plus_minus(
                        {
                            "mean": entry[metric]["mean_supported"],
                            "std": entry[metric]["std_supported"],
                        }
                    ),
                    f"{entry[metric]['pooled']:.3f}",
                    flag,
                )
            )
    return _table(
        (
            "metric",
            "paper protocol (all folds)",
            "folds with support",
            "pooled",
            "zero-support folds",
        ),
        rows,
    )


def _folds_section(report: dict) -> str:
    rows = []
    for i, fold in enumerate(report["folds"]):
        support = [fold["per_class"][c]["support"] for c in LABELS]
        flags = [c for c, s in zip(LABELS, support, strict=True) if s == 0]
        rows.append(
            (
                str(i),
                str(fold["n"]),
                "/".join(str(s) for s in support),
                f"{fold['accuracy']:.3f}",
                *(f"{fold['per_class'][c]['recall']:.3f}" for c in LABELS),
                ("no test clip of " + ", ".join(flags)) if flags else "",
            )
        )
    return _table(
        (
            "fold",
            "clips",
            "support cov/pne/reg",
            "accuracy",
            "cov recall",
            "pne recall",
            "reg recall",
            "flag",
        ),
        rows,
    )


def _ci(interval: dict | None) -> str:
    if not interval or interval.get("low") is None or not math.isfinite(interval["low"]):
        return "–"
    return f"[{interval['low']:.3f}, {interval['high']:.3f}]"


def rescore_table(record: dict) -> str:
    """Markdown: each re-scored trial's study score beside its re-scored mean ± std."""
    seeds = len(record["seeds"])
    lines = [
        f"| trial | study score | re-scored mean ± std over {seeds} "
        "seeds | cov recall (re-scored) | |",
        "|---|---|---|---|---|",
    ]
    for row in record["trials"]:
        mark = "winner, exported" if row["trial_id"] == record["winner"] else ""
        lines.append(
            f"| {row['trial_id']} | {row['study_accuracy']:.3f} | {row['mean']:.3f} ± "
            f"{row['std']:.3f} | {row['cov_recall_mean']:.3f} | {mark} |"
        )
    lines.append("")
    label = str(record["label"])
    lines.append(f"{label[:1].upper()}{label[1:]}.")
    return "\n".join(lines)


def confidence_section(report: dict) -> str:
    """The study best's 95% bootstrap intervals: accuracy and each class's recall."""
    conf = report.get("confidence")
    if not conf:
        return "No intervals: this report predates them."
    rows = [("accuracy", f"{conf['accuracy']['estimate']:.3f}", _ci(conf["accuracy"]))]
    for cls in LABELS:
        entry = conf["recall"][cls]
        rows.append((f"{cls} recall", _num(entry["estimate"]), _ci(entry)))
    return "\n\n".join(
        [
            _table((f"pooled metric (study best, {_selected(report)})", "value", "95% CI"), rows),
            f"{int(conf['level'] * 100)}% {conf['method']}: {conf['resamples']} resamples of "
            f"the {conf['clips']} clips (seed {conf['seed']}). The interval shows how much the "
            "figure moves with the clips drawn; it does not remove the selection optimism.",
        ]
    )


def _estimate_row(label: str, summary: dict, interval: dict | None) -> tuple[str, ...]:
    """(label, accuracy, its CI, COVID recall, its CI) from a summary and bootstrap intervals."""
    interval = interval or {}
    return (
        label,
        plus_minus(summary["accuracy"]),
        _ci(interval.get("accuracy")),
        plus_minus(summary["per_class"]["cov"]["recall"]),
        _ci(interval.get("recall", {}).get("cov")),
    )


def _selected(report: dict) -> str:
    """How the study's best was chosen, in a table header's words."""
    on_test = report.get("selected_on", SELECTED_ON) == SELECTED_ON
    return "selected on test folds" if on_test else "selected without test folds"


def _selection_note(report: dict) -> str:
    """How the best trial was chosen, in bold, and what that makes its figures; the feasibility
    count when ``objective.constraints`` were set."""
    label = report.get("selected_on", SELECTED_ON)
    selection = report.get("selection") or {}
    if label == SELECTED_ON:
        note = (
            f'**Every "ours" figure is {label}**: the study chose this trial by its mean accuracy '
            "over these same folds. The honest figures are the nested CV and the spatial-only "
            "baseline below."
        )
    else:
        note = (
            f'**Every "ours" figure is {label}**: the search and the choice of this trial saw only '
            "each fold's inner-validation split, so its test-fold figures are estimates, with the "
            "bootstrap intervals below; nested CV is still the estimate of the whole recipe."
        )
    front = selection.get("front")
    if front:
        directions = ", ".join((selection.get("objective") or {}).get("directions") or ())
        rule = " and ".join(selection.get("pick") or ())
        note += (
            f" The study searched {directions} at once: {len(front)} of "
            f"{selection.get('candidates')} finished trials are on its Pareto front (plot below); "
            f"this one has the highest accuracy on it{f' that meets {rule}' if rule else ''}."
        )
    constraints = [
        *((selection.get("objective") or {}).get("constraints") or ()),
        *(selection.get("pick") or ()),
    ]
    if constraints:
        feasible = selection.get("feasible")
        chosen = "the best feasible one was chosen." if feasible else "none was: it breaks them."
        note += (
            f" Constraints ({', '.join(constraints)}, on the same folds as the objective): "
            f"{feasible} of {selection.get('candidates')} finished trials were feasible; {chosen}"
        )
    return note


def estimates_section(report: dict) -> str:
    """Every estimate on this split side by side, each labelled by how it was chosen: the study's
    best (selected on the test folds), the paper's own head trained here, the spatial-only
    baseline, and nested CV when present; then the one-sentence temporal-vs-spatial claim.

    Accuracy and COVID recall are the paper's mean ± std over folds; the 95% intervals bootstrap
    the clips of the pooled out-of-fold predictions (their centre is the pooled value)."""
    study = f"study best, trial {report['card']['trial_id']}: {report.get('selected_on', '')}"
    rows = [_estimate_row(study, report["ours"], report.get("confidence"))]
    base = report.get("paper_config")
    if base:
        rows.append(
            (
                f"paper's head and recipe, trained here, trial {base['trial_id']} (fixed config)",
                plus_minus({"mean": base["accuracy"], "std": base.get("accuracy_std")}),
                "–",
                _num(base.get("cov_recall")),
                "–",
            )
        )
    probe = report.get("baseline")
    if probe:
        rows.append(
            _estimate_row(f"{probe['label']} (honest)", probe["summary"], probe.get("confidence"))
        )
    nested = report.get("nested")
    if nested and nested.get("accuracy"):
        interval = report.get("nested_confidence") or {}
        rows.append(
            (
                "nested CV of the whole search (honest)",
                plus_minus(nested["accuracy"]),
                _ci(interval.get("accuracy")),
                plus_minus(nested.get("cov_recall")),
                _ci(interval.get("recall", {}).get("cov")),
            )
        )
    table = _table(
        ("estimate", "accuracy", "95% CI (pooled)", "cov recall", "cov recall 95% CI (pooled)"),
        rows,
    )
    parts = [table]
    if not base:
        parts.append(
            "The paper's own head and recipe is not in this study "
            "(`searcher.start_from_paper_best: true` in the study config runs it first)."
        )
    if report.get("claim"):
        parts.append(f"**Claim.** {report['claim']}")
    return "\n\n".join(parts)


def render_markdown(report: dict) -> str:
    """report.md: comparison, per-fold table, support-aware view, plots, nested section, notes."""
    card = report["card"]
    parts = [
        f"# lushpo evaluation: {report['model_label']}",
        "",
        f"Model folder `{report['directory']}`, trial `{card['trial_id']}` of run `{card['run']}`; "
        f"feature set `{card['feature_set']}` ({card['clips']} clips, {card['frames']} frames, "
        f"{card['sampling']} sampling, backbone weights sha256 `{card['weights_sha256']}`), split "
        f"`{card['split']['name']}` with {len(report['folds'])} folds. Metrics are recomputed from "
        f"the exported `fold-{{i}}.h5` files on their test folds; mean and population std over "
        f"folds "
        f"(the paper's protocol).",
        "",
        _selection_note(report),
        "",
        "## Ours vs the paper",
        "",
        comparison_table(report),
        "",
        "The paper's numbers are from its evaluation.csv, on all 185 clips of its split; ours use "
        "the clips present in this feature set, so the folds differ in size.",
        "",
        "## Estimates on this split",
        "",
        estimates_section(report),
        "",
        "## Uncertainty",
        "",
        confidence_section(report),
        "",
        "## Per fold",
        "",
        _folds_section(report),
        "",
        "## Support-aware metrics",
        "",
        "Folds without a test clip of a class score 0 recall, precision and F1 for that class "
        "under the paper's protocol. "
        "Below: the mean over only the folds that hold the class, and the metric pooled over every "
        "fold's predictions (summed confusion matrix).",
        "",
        _support_section(report),
        "",
        "## Nested cross-validation (honest estimate)",
        "",
    ]
    nested = report.get("nested")
    if nested:
        parts += _nested_section(report, nested)
    else:
        parts += [
            "NOT AVAILABLE: this export holds no nested cross-validation result, so only the "
            f"study's figure (hyperparameters {_selected(report)}) is shown. Run `lushpo tune "
            "--nested` to get the estimate of the whole recipe.",
        ]
    parts += ["", "## The winner's curse (re-scored top trials)", ""]
    if report.get("rescore"):
        parts += [
            "The study's top trials, each retrained with fresh seeds (new initialisation, dropout "
            "masks, batch order and inner validation split) on the same outer folds. The gap "
            "between a trial's study score and its re-scored mean is the luck of its one run; "
            "the exported model is the re-scored winner.",
            "",
            rescore_table(report["rescore"]),
        ]
    else:
        parts.append(
            "Not measured: set `rescore: {top_k: 3, seeds: 5}` in the study config to retrain "
            "the top trials with fresh seeds and export the winner by their mean."
        )
    parts += ["", "## Plots", ""]
    for name, path in report["plots"].items():
        parts += [f"![{name}]({path})", ""]
    parts += ["## Notes", ""]
    for note in report["notes"]:
        parts.append(f"- {note}")
    return "\n".join(parts) + "\n"


def _nested_section(report: dict, nested: dict) -> list[str]:
    """Paper-style vs nested figure side by side, why they differ, and the outer folds."""
    outer = nested.get("outer_folds") or []
    budget = nested.get("budget") or {}
    trials = budget.get("trials", "N")
    inner_k = nested.get("inner_folds", "K")
    paper_acc = report["ours"]["accuracy"]
    paper_cov = report["ours"]["per_class"]["cov"]["recall"]
    parts = [
        "The paper-style figure above is the mean test accuracy of the configuration that "
        "scored best on those very test folds: the folds took part in choosing it, so it is "
        "biased upwards, the more so the more configurations the search tried. Nested "
        "cross-validation repeats the whole recipe inside each outer training set — a search of "
        f"{trials} trials on {inner_k} inner folds of the outer fold's training clips only, the "
        "winner retrained on the whole outer training set for the median of its inner folds' "
        "best epochs — and scores it once on the outer test fold, which the search never saw. "
        "Its mean over the outer folds estimates what the recipe, search included, scores on "
        "new clips; the difference is the selection optimism. The configuration selected may "
        "differ between outer folds: nested CV rates the recipe, not one configuration.",
        "",
        _table(
            ("estimate", "accuracy", "cov recall", "folds"),
            [
                (
                    f"study best ({_selected(report)})",
                    plus_minus(paper_acc),
                    plus_minus(paper_cov),
                    str(len(report.get("folds", []))),
                ),
                (
                    "nested (honest)",
                    plus_minus(nested.get("accuracy")),
                    plus_minus(nested.get("cov_recall")),
                    str(len(outer) or "–"),
                ),
                (
                    "optimism (paper-style − nested)",
                    _delta(paper_acc, nested.get("accuracy")),
                    _delta(paper_cov, nested.get("cov_recall")),
                    "",
                ),
            ],
        ),
    ]
    if outer:
        rows = []
        for f in outer:
            test = f.get("test", {})
            cov = test.get("per_class", {}).get("cov", {})
            params = ", ".join(f"{k}={_param(v)}" for k, v in shown_params(f.get("params", {})))
            rows.append(
                (
                    str(f.get("outer_fold")),
                    f"{f.get('train_clips')}/{f.get('test_clips')}",
                    str(f.get("trials_finished", f.get("trials"))),
                    _num(f.get("inner_accuracy", {}).get("mean")),
                    str(f.get("epochs")),
                    _num(test.get("accuracy")),
                    _num(cov.get("recall")) if cov.get("support") else "– (no cov clip)",
                    params,
                )
            )
        parts += [
            "",
            f"Per outer fold ({nested.get('outer_split', {}).get('name', '?')} split; "
            "inner CV accuracy is the selected trial's own mean over its inner test folds):",
            "",
            _table(
                (
                    "outer fold",
                    "train/test clips",
                    "trials",
                    "inner CV acc",
                    "epochs",
                    "outer test acc",
                    "cov recall",
                    "selected params",
                ),
                rows,
            ),
        ]
    return parts


def _num(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _param(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# --- plots -------------------------------------------------------------------------------------


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(cm: Sequence[Sequence[int]], path: Path) -> None:
    """Confusion matrix summed over the folds (rows true, columns predicted)."""
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cm, cmap="Blues")
    names = [_CLASS_NAMES[c] for c in LABELS]
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(r) for r in cm) or 1
    for i, row in enumerate(cm):
        for j, value in enumerate(row):
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                color="white" if value > top / 2 else "black",
            )
    ax.set_title("confusion matrix, summed over folds")
    _save(fig, path)


def plot_fold_accuracy(accuracies: Sequence[float], paper: dict | None, path: Path) -> None:
    """Our per-fold accuracy against the paper's mean ± std (it publishes no per-fold values)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.bar(range(len(accuracies)), accuracies, color="tab:blue", label="ours (per fold)")
    mean = sum(accuracies) / len(accuracies)
    ax.axhline(mean, color="tab:blue", linestyle="--", label=f"our mean {mean:.2f}")
    if paper:
        m, s = paper["mean"], paper["std"]
        ax.axhline(m, color="tab:red", label=f"paper mean {m:.2f}")
        ax.axhspan(
            max(0.0, m - s), min(1.0, m + s), color="tab:red", alpha=0.15, label="paper ± std"
        )
    ax.set_xticks(range(len(accuracies)), [f"fold {i}" for i in range(len(accuracies))])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_history(values: Sequence[float], path: Path) -> None:
    """Objective of each completed trial in order, with the best so far."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    best, running = [], -math.inf
    for v in values:
        running = max(running, v)
        best.append(running)
    ax.plot(range(len(values)), values, "o", label="trial")
    ax.plot(range(len(values)), best, "-", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("mean CV accuracy")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("optimisation history")
    _save(fig, path)


def plot_front(
    trials: Sequence[dict], metrics: Sequence[str], chosen: str, pick: Sequence[str], path: Path
) -> None:
    """Every finished trial in the study's first two objectives (export's card rows: ``values``,
    ``on_front``, ``trial_id``), the Pareto front joined, the exported trial starred."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    rest = [t for t in trials if not t.get("on_front")]
    front = sorted((t for t in trials if t.get("on_front")), key=lambda t: t["values"][0])
    ax.plot([t["values"][0] for t in rest], [t["values"][1] for t in rest], "o", color="0.7",
            label="trial")  # fmt: skip
    ax.plot([t["values"][0] for t in front], [t["values"][1] for t in front], "o-",
            color="tab:blue", label="Pareto front")  # fmt: skip
    for t in trials:
        if t["trial_id"] == chosen:
            label = f"exported ({', '.join(pick)})" if pick else "exported"
            ax.plot(*t["values"][:2], "*", color="tab:red", markersize=14, label=label)
    ax.set_xlabel(f"mean CV {metrics[0]}")
    ax.set_ylabel(f"mean CV {metrics[1]}")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Pareto front")
    _save(fig, path)


def plot_importances(importances: dict[str, float], path: Path) -> None:
    """Hyperparameter importances, largest on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(5.2, 0.35 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:green")
    ax.set_xlabel("importance")
    ax.set_title("hyperparameter importances")
    _save(fig, path)

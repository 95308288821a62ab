"""Check an exported model against the paper: recompute its metrics from the fold files.

`evaluate(directory)` loads each exported ``fold-{i}.h5`` with plain
``tf.keras.models.load_model``, scores it on its test fold (features from the folder's own
paper-layout copy, else the store), and applies the paper's protocol (`hpo.train`): accuracy
and per-class precision, recall, F1, specificity per fold, mean and population std over folds.
It sets these beside the paper's `evaluation.csv` row for the same backbone and N and the paper's
headline (Xception, 20 frames), flags folds where a class has no test clip and reports those
classes support-aware too. Every figure of the study's best carries `SELECTED_ON`; accuracy and
per-class recall get 95% bootstrap intervals over the pooled out-of-fold clips; a spatial-only
linear probe (`hpo.results`), trained and scored on the same folds, stands beside them, with
one sentence on whether the temporal model beats it. Writes ``report.json``, ``report.md`` and
PNG plots into the folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hpo.results import _report as render
from hpo.results._baseline import linear_probe
from hpo.results._card import claim, confidence, fold_predictions, read_card
from hpo.results._export_folder import add_files, writable
from hpo.results._paper import (
    PAPER_HEADLINE,
    PaperFormatError,
    paper_row,
    read_evaluation,
    read_paper_layout,
)
from hpo.search import connectable, locked, masked, selected_on
from hpo.train import CLASS_METRICS, summarize
from pipeline.files import atomic_write_json, atomic_write_text, jsonable
from pipeline.manifest import LABELS, Split
from pipeline.store import open_store

__all__ = ["REPORT_JSON", "REPORT_MD", "evaluate", "load_split_features"]

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FRONT = "pareto_front.png"


def load_split_features(
    directory: Path, card: dict, store: str | None = None, cache_dir: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, int], str]:
    """Features and labels of every clip in the card's split, and where they were read from.

    The folder's paper-layout copy is preferred (the export is self-contained); the store is the
    fallback when the copy is missing or incomplete.
    """
    ids = sorted(
        {c for fold in card["split"]["folds"] for part in ("train", "test") for c in fold[part]}
    )
    layout = directory / card.get("paper_layout", "")
    if card.get("paper_layout") and layout.is_dir():
        try:
            x, y = read_paper_layout(layout, ids)
            return (
                dict(zip(ids, x, strict=True)),
                dict(zip(ids, y.tolist(), strict=True)),
                str(layout),
            )
        except PaperFormatError:
            if not store:
                raise
    if not store:
        raise FileNotFoundError(
            f"{layout} is missing and no feature store was given (--store / LUSHPO_STORE)"
        )

    fs = open_store(store, cache_dir=cache_dir).get(card["feature_set"])
    position = {c: i for i, c in enumerate(fs.clip_ids)}
    missing = [c for c in ids if c not in position]
    if missing:
        raise ValueError(
            f"feature set {card['feature_set']} lacks clips of the split: {missing[:3]}"
        )
    feats = {c: np.asarray(fs.features[position[c]], dtype=np.float32) for c in ids}
    labels = {c: int(fs.labels[position[c]]) for c in ids}
    return feats, labels, f"{store} ({card['feature_set']})"


def baseline_entry(probe: dict, nested: dict | None) -> dict:
    """The probe's report entry: its figures, and the honest comparison when a nested result
    exists (both are mean accuracies over outer folds that chose nothing)."""
    entry = {k: v for k, v in probe.items() if k != "predictions"}
    if nested and nested.get("accuracy"):
        entry["nested_minus_baseline"] = (
            nested["accuracy"]["mean"] - probe["summary"]["accuracy"]["mean"]
        )
    return entry


def _ours(summary: dict) -> dict:
    return {
        "accuracy": summary["accuracy"],
        "per_class": {
            cls: {
                m: {k: summary["per_class"][cls][m][k] for k in ("mean", "std")}
                for m in CLASS_METRICS
            }
            for cls in LABELS
        },
    }


def _support_aware(summary: dict) -> dict:
    out = {}
    for cls in LABELS:
        entry = summary["per_class"][cls]
        out[cls] = {
            "zero_support_folds": entry["zero_support_folds"],
            "support": entry["support"],
            **{
                m: {
                    "mean_supported": entry[m]["mean_supported"],
                    "std_supported": entry[m]["std_supported"],
                    "pooled": summary["pooled"]["per_class"][cls][m],
                }
                for m in CLASS_METRICS
            },
        }
    return out


def _deltas(ours: dict, paper: dict | None) -> dict[str, float] | None:
    if paper is None:
        return None
    out = {"accuracy": ours["accuracy"]["mean"] - paper["accuracy"]["mean"]}
    for cls in LABELS:
        for m in CLASS_METRICS:
            out[f"{cls}_{m}"] = (
                ours["per_class"][cls][m]["mean"] - paper["per_class"][cls][m]["mean"]
            )
    return out


def _study_plots(
    card: dict, directory: Path, optuna_storage: str | None, notes: list[str]
) -> dict[str, str]:
    """Optimisation history and parameter importances from the Optuna study the card names; the
    Pareto front of a multi-objective study."""
    import optuna

    plots: dict[str, str] = {}
    info = card.get("study") or {}
    storage = optuna_storage or info.get("optuna_storage")
    values: list[float] = []
    study = None
    if storage and storage.startswith("sqlite:///") and not Path(storage[10:]).is_file():
        notes.append(f"Optuna storage {storage} is not on this machine; history from the card.")
        storage = None  # opening it would create an empty database
    if storage:
        try:
            name = info.get("study_name")
            storage = connectable(storage)  # a card's URL is masked: the password is ours
            if not name:
                names = optuna.study.get_all_study_names(storage=storage)
                if len(names) != 1:
                    raise ValueError(f"storage holds studies {names}; the card names none")
                name = names[0]
            study = optuna.load_study(study_name=name, storage=storage)
        except Exception as exc:  # a missing/unreachable storage must not block the report
            notes.append(
                f"Optuna study not readable at {masked(storage)}: {exc}; history from the run's "
                "trials."
            )
    front = _front_plot(card, directory)
    if front:
        plots["Pareto front"] = front
    # a multi-objective study's history and importances follow its first objective, accuracy
    target = None if study is None or len(study.directions) == 1 else (lambda t: t.values[0])
    if study is not None:
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        values = [float(t.values[0]) for t in done if t.values]
    else:
        rows = card.get("trials", [])  # "objective": the study's; cards before it: "accuracy"
        values = [v for t in rows if (v := t.get("objective", t.get("accuracy"))) is not None]
    if len(values) < 2:
        notes.append(
            f"Optimisation history and importances skipped: {len(values)} completed trial(s) (< 2)."
        )
        return plots
    render.plot_history(values, directory / "history.png")
    plots["optimisation history"] = "history.png"
    if study is None:
        notes.append("Parameter importances skipped: no Optuna study recorded in the model card.")
        return plots
    try:
        with warnings.catch_warnings():  # "Some regimes … have less than 2 trials": a note's job
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study, target=target)
    except Exception as exc:  # e.g. every trial has the same parameters
        notes.append(f"Parameter importances skipped: {exc}")
        return plots
    if not importances:
        notes.append("Parameter importances skipped: no parameter varies across trials.")
        return plots
    render.plot_importances(dict(importances), directory / "importances.png")
    plots["parameter importances"] = "importances.png"
    return plots


def _front_plot(card: dict, directory: Path) -> str | None:
    """The study's trials in its first two objectives, the Pareto front and the exported point
    marked, from the card (`hpo.results`); None for a single-objective study."""
    selection = card.get("selection") or {}
    directions = (selection.get("objective") or {}).get("directions")
    rows = [t for t in card.get("trials", []) if t.get("values")]
    if not directions or not rows:
        return None
    render.plot_front(
        rows, list(directions), card["trial_id"], selection.get("pick") or [], directory / FRONT
    )
    return FRONT


def paper_config_baseline(card: dict, ours: dict) -> dict | None:
    """The study's trial of the paper's own head and recipe (``searcher.start_from_paper_best``)
    beside the exported best: both mean CV test accuracies on the same split and features."""
    rows = [
        t for t in card.get("trials", []) if t.get("paper_best") and t.get("accuracy") is not None
    ]
    if not rows:
        return None
    row = rows[0]
    return {
        "trial_id": row["trial_id"],
        "accuracy": row["accuracy"],
        "accuracy_std": row.get("accuracy_std"),
        "cov_recall": row.get("cov_recall"),
        "delta_accuracy": ours["accuracy"]["mean"] - row["accuracy"],
    }


def _nested_confidence(nested: dict | None) -> dict | None:
    """Bootstrap intervals of the nested estimate: each outer fold's test predictions pooled, as
    for the study's best (`hpo.results.confidence`); None without nested CV."""
    pooled = {}
    for fold in (nested or {}).get("outer_folds", []):
        test = fold.get("test") or {}
        for clip, true, pred in zip(
            test.get("test_ids", []), test.get("y_true", []), test.get("y_pred", []), strict=True
        ):
            pooled[clip] = (true, pred)
    return confidence(pooled) if pooled else None


def _nested_notes(card: dict) -> list[str]:
    """Warn when the nested result is not comparable with this export (another outer split)."""
    nested = card.get("nested")
    if not nested or "outer_split" not in nested:
        return []

    ours = Split.from_dict(card["split"]).digest()
    theirs = nested["outer_split"].get("digest")
    if theirs == ours:
        return [f"Nested CV ran on this export's split ({card['split']['name']}, same folds)."]
    return [
        f"WARNING: the nested CV's outer split ({nested['outer_split'].get('name')}, digest "
        f"{str(theirs)[:12]}) differs from this export's split (digest {ours[:12]}); the two "
        "figures are not on the same folds."
    ]


def evaluate(
    directory: Path | str,
    *,
    paper_csv: Path | str | None = None,
    store: str | None = None,
    cache_dir: str | None = None,
    optuna_storage: str | None = None,
) -> dict[str, Any]:
    """Recompute the paper's metrics for an exported folder and write the report into it.

    Args:
        directory: a finished `lushpo export` folder.
        paper_csv: the paper's evaluation.csv; without it the paper columns read "–".
        store: feature store URI, used only when the folder's paper-layout copy is missing.
        cache_dir: node cache for s3:// stores.
        optuna_storage: overrides the card's Optuna storage URL (e.g. with a password).

    Returns:
        The report (also written as report.json).
    """
    directory = Path(directory)
    card = read_card(directory)
    writable(directory)  # before the work, not after it
    with locked(str(directory), "evaluate", log=lambda _line: None):  # no export writes it now
        return _evaluate(directory, card, paper_csv, store, cache_dir, optuna_storage)


def _evaluate(
    directory: Path,
    card: dict,
    paper_csv: Path | str | None,
    store: str | None,
    cache_dir: str | None,
    optuna_storage: str | None,
) -> dict[str, Any]:
    feats, labels, source = load_split_features(
        directory, card, store or card.get("store"), cache_dir
    )
    folds, pooled = fold_predictions(
        directory,
        card["split"],
        lambda ids: (np.stack([feats[c] for c in ids]), np.asarray([labels[c] for c in ids])),
    )
    summary = summarize(folds)
    probe = linear_probe(feats, labels, Split.from_dict(card["split"]))
    notes: list[str] = [f"Features read from {source}."]
    matches = len(folds) == len(card["folds"]) and all(
        a["confusion_matrix"] == b["confusion_matrix"]
        for a, b in zip(folds, card["folds"], strict=True)
    )
    if not matches:
        notes.append("WARNING: recomputed fold metrics differ from those in model_card.json.")

    label = f"{card['backbone']}-{card['frames']}"
    paper = None
    headline_row = None
    if paper_csv is not None:
        rows = read_evaluation(paper_csv)
        row = paper_row(rows, card["backbone"], int(card["frames"]))
        paper = row.as_dict() if row else None
        if row is None:
            notes.append(f"{paper_csv} has no row {label}.")
        headline_row = paper_row(rows, "xception", 20)
    else:
        notes.append("No paper evaluation.csv given: paper columns are empty.")
    ours = _ours(summary)
    headline = {
        "model_label": PAPER_HEADLINE["model_label"],
        "accuracy": PAPER_HEADLINE["accuracy"],
        "cov_recall": PAPER_HEADLINE["cov_recall"],
        "evaluation_csv": headline_row.as_dict()["accuracy"] if headline_row else None,
        "ours_accuracy": ours["accuracy"],
        "ours_cov_recall": ours["per_class"]["cov"]["recall"],
        "delta_accuracy": ours["accuracy"]["mean"] - PAPER_HEADLINE["accuracy"]["mean"],
        "delta_cov_recall": ours["per_class"]["cov"]["recall"]["mean"]
        - PAPER_HEADLINE["cov_recall"]["mean"],
    }
    if label != PAPER_HEADLINE["model_label"]:
        notes.append(
            f"The headline is the paper's {PAPER_HEADLINE['model_label']}; ours is {label}."
        )
    zero = {cls: summary["per_class"][cls]["zero_support_folds"] for cls in LABELS}
    for cls, idx in zero.items():
        if idx:
            notes.append(
                f"Zero-support folds for {cls}: {idx} (no test clip); their {cls} metrics count as "
                "0 "
                "under the paper's protocol; see the support-aware table."
            )

    notes += _nested_notes(card)
    if card.get("baseline") and card["baseline"]["folds"] != probe["folds"]:
        notes.append("WARNING: the spatial-only baseline differs from the one in model_card.json.")

    plots = {}
    render.plot_confusion(summary["pooled"]["confusion_matrix"], directory / "confusion_matrix.png")
    plots["summed confusion matrix"] = "confusion_matrix.png"
    render.plot_fold_accuracy(
        [f["accuracy"] for f in folds],
        paper["accuracy"] if paper else None,
        directory / "fold_accuracy.png",
    )
    plots["per-fold accuracy vs paper"] = "fold_accuracy.png"
    plots.update(_study_plots(card, directory, optuna_storage, notes))

    report = {
        "directory": str(directory),
        "model_label": label,
        "card": {
            k: card[k]
            for k in (
                "trial_id",
                "run",
                "feature_set",
                "clips",
                "frames",
                "sampling",
                "backbone",
                "weights_sha256",
            )
        }
        | {"split": {"name": card["split"]["name"]}},
        "selected_on": selected_on(card),
        "selection": card.get("selection"),
        "folds": folds,
        "summary": summary,
        "ours": ours,
        "confidence": confidence(pooled),
        "baseline": baseline_entry(probe, card.get("nested")),
        "paper": paper,
        "deltas": _deltas(ours, paper),
        "headline": headline,
        "paper_config": paper_config_baseline(card, ours),
        "zero_support_folds": zero,
        "support_aware": _support_aware(summary),
        "matches_model_card": matches,
        "nested": card.get("nested"),
        "nested_confidence": _nested_confidence(card.get("nested")),
        "rescore": card.get("rescore"),
        "plots": plots,
        "notes": notes,
    }
    report["claim"] = claim({**card, "summary": summary, "baseline": probe})
    report["markdown"] = REPORT_MD
    atomic_write_text(directory / REPORT_MD, render.render_markdown(report))
    atomic_write_json(directory / REPORT_JSON, jsonable(report))
    add_files(directory, [REPORT_MD, REPORT_JSON, *plots.values()])
    return report

"""The paper's whole table: every row of evaluation.csv beside our best for that backbone × N.

Rows are the paper's 68 (`hpo.results.read_evaluation`); a cell of ours is the evaluate report of
that cell's exported best trial. For accuracy and COVID recall: ours (mean ± std over folds), the
paper's, Δ; our rank among the cells we ran and the paper's rank among all its rows (1 = best,
ties share the best rank), and Spearman's rank correlation between the two orderings over the
cells both have. Rows we did not run say "not run".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpo.results._paper import PaperRow
from hpo.results._report import plus_minus

__all__ = ["grid_table", "plot_grid", "render_grid_markdown"]

SELECTION_NOTE = (
    "Ours: each cell's best trial, selected on the same test folds it is scored on (the paper's "
    "protocol; optimistic)."
)


def _ranks(values: Mapping[str, float]) -> dict[str, int]:
    """1 = highest; equal values share the best rank ("min" ranking)."""
    ordered = sorted(values.values(), reverse=True)
    return {k: 1 + ordered.index(v) for k, v in values.items()}


def grid_table(reports: Mapping[str, dict], paper_rows: Sequence[PaperRow]) -> dict[str, Any]:
    """{rows: [...], spearman: {...}, cells_run, cells_total} from per-cell evaluate reports
    keyed by model label (``xception-20``)."""
    from scipy.stats import spearmanr

    paper_acc = {r.model_label: r.accuracy[0] for r in paper_rows}
    paper_rank = _ranks(paper_acc)
    ours_acc = {label: rep["ours"]["accuracy"]["mean"] for label, rep in reports.items()}
    ours_rank = _ranks(ours_acc)
    rows = []
    for row in paper_rows:
        rep = reports.get(row.model_label)
        paper_cov = row.per_class["cov"]["recall"]
        entry: dict[str, Any] = {
            "model_label": row.model_label,
            "backbone": row.backbone,
            "frames": row.frames,
            "paper_accuracy": {"mean": row.accuracy[0], "std": row.accuracy[1]},
            "paper_cov_recall": {"mean": paper_cov[0], "std": paper_cov[1]},
            "paper_rank": paper_rank[row.model_label],
            "run": rep is not None,
        }
        if rep is not None:
            acc = rep["ours"]["accuracy"]
            cov = rep["ours"]["per_class"]["cov"]["recall"]
            entry |= {
                "accuracy": {"mean": acc["mean"], "std": acc["std"]},
                "cov_recall": {"mean": cov["mean"], "std": cov["std"]},
                "delta_accuracy": acc["mean"] - row.accuracy[0],
                "delta_cov_recall": cov["mean"] - paper_cov[0],
                "rank": ours_rank[row.model_label],
                "trial_id": rep["card"]["trial_id"],
            }
        rows.append(entry)
    both = [r for r in rows if r["run"]]
    spearman: dict[str, Any] = {"cells": len(both), "rho": None, "p_value": None}
    if len(both) >= 3:
        ours = [r["accuracy"]["mean"] for r in both]
        rho, p = spearmanr(ours, [r["paper_accuracy"]["mean"] for r in both])
        if math.isfinite(rho):
            spearman |= {"rho": float(rho), "p_value": float(p)}
    else:
        spearman["note"] = "needs at least 3 cells run"
    extra = sorted(set(reports) - set(paper_acc))
    return {
        "rows": rows,
        "spearman": spearman,
        "cells_run": len(both),
        "cells_total": len(rows),
        "not_in_paper": extra,
        "selection": SELECTION_NOTE,
    }


def render_grid_markdown(table: dict[str, Any]) -> str:
    header = (
        "| model | ours acc | paper acc | Δ acc | ours COVID recall | paper COVID recall | "
        "Δ recall | our rank | paper rank |"
    )
    lines = [
        "# lushpo vs Barros et al., every backbone × N",
        "",
        f"{table['cells_run']} of {table['cells_total']} rows run. {table['selection']}",
        "",
        header,
        "|" + "---|" * 9,
    ]
    for r in table["rows"]:
        if r["run"]:
            cells = [
                plus_minus(r["accuracy"]), plus_minus(r["paper_accuracy"]),
                f"{r['delta_accuracy']:+.3f}",
                plus_minus(r["cov_recall"]), plus_minus(r["paper_cov_recall"]),
                f"{r['delta_cov_recall']:+.3f}",
                str(r["rank"]), str(r["paper_rank"]),
            ]  # fmt: skip
        else:
            cells = [
                "not run", plus_minus(r["paper_accuracy"]), "–",
                "not run", plus_minus(r["paper_cov_recall"]),
                "–", "–", str(r["paper_rank"]),
            ]  # fmt: skip
        lines.append("| " + " | ".join([r["model_label"], *cells]) + " |")
    s = table["spearman"]
    lines.append("")
    if s["rho"] is None:
        why = s.get("note", "undefined (constant accuracies)")
        lines.append(f"Spearman rank correlation ({s['cells']} cells): not computed, {why}.")
    else:
        lines.append(
            f"Spearman rank correlation of our accuracy ordering with the paper's over the "
            f"{s['cells']} cells run: ρ = {s['rho']:.3f} (p = {s['p_value']:.3g})."
        )
    if table["not_in_paper"]:
        lines.append(f"Cells with no paper row: {', '.join(table['not_in_paper'])}.")
    return "\n".join(lines) + "\n"


def plot_grid(table: dict[str, Any], path: Path) -> None:
    """Ours vs the paper's accuracy per cell run (one point per backbone × N, the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = [r for r in table["rows"] if r["run"]]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    for r in run:
        x, y = r["paper_accuracy"]["mean"], r["accuracy"]["mean"]
        ax.errorbar(x, y, xerr=r["paper_accuracy"]["std"], yerr=r["accuracy"]["std"], fmt="o",
                    ms=4, alpha=0.8, capsize=2)  # fmt: skip
        ax.annotate(r["model_label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlim=(0, 1.05), ylim=(0, 1.05), xlabel="paper accuracy (evaluation.csv)",
           ylabel="lushpo accuracy (best trial per cell)",
           title=f"{len(run)} of {table['cells_total']} backbone × N cells")  # fmt: skip
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)

"""lushpo's benchmarks: each `bench.<id>_*` module measures one number and writes it to
``bench/results/<module>.json``. Run with ``make bench`` (all) or ``python -m bench p1 ...``."""

from __future__ import annotations

__all__ = ["BENCHMARKS"]

BENCHMARKS: dict[str, str] = {
    "p1": "bench.p1_extraction",  # extraction frames/s ÷ bare model.predict
    "p2": "bench.p2_study",  # lushpo tune ÷ Optuna alone (sequential, and n processes)
    "p3": "bench.p3_cluster_extraction",  # cluster extraction frames/s, 2 nodes ÷ 1 node
    "p6": "bench.p6_folds",  # 5-fold trial time ÷ 1-fold, same head and epochs
    "p7": "bench.p7_grid",  # a grid as one experiment: slot occupancy, wall ÷ cell by cell
    "p8": "bench.p8_scale",  # driver cost per trial at 500 trials ÷ at 10
    "p9": "bench.p9_cli_startup",  # seconds before `lushpo` answers (--version, ls, …)
    "p10": "bench.p10_threads",  # trials/hour of 4 one-CPU trials: per-trial threads ÷ TF's own
    "p11": "bench.p11_store",  # a second features run ÷ the first; an outage's wait ÷ its window
}
"""Benchmark id → module exposing ``run(argv: list[str] | None) -> dict``."""

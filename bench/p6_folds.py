"""P6: what the k folds of one trial cost against one fold, same head, same epochs, one run.

P6 = wall time of a 5-fold lockstep trial (`hpo.train.LockstepCV`: one graph step trains
every fold's batch) ÷ wall time of the same trial with its first fold only. Both include what a
trial pays besides its epochs: building the fold models, tracing the graphs, scoring the test
folds. Early stopping is off (patience = epochs) so both train every epoch. The same run also
times the five folds trained one after another as separate one-fold trials, the way k separate
Keras models would run: ``separate ÷ batched`` is what the shared graph saves.

Two heads: a small one (LSTM 64 → Dense 64) and the paper's (LSTM 512 → Dense 1024 → Dense
1024). Features are synthetic but shaped like the paper's Xception-20 set (119 clips × 20 ×
2048) with a stratified 5-fold split, so a step costs what a real one does. Goal for
the small head on the 2-core development machine: ≤ 2.0.

    python -m bench p6 [--epochs-small 20] [--epochs-paper 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench._record import add_feature_args, machine, write_record

__all__ = ["run"]

RESULTS = Path(__file__).resolve().parent / "results" / "p6_folds.json"

SMALL = {
    "lstm_units": 64,
    "lstm_dropout": 0.2,
    "dense_layers": 1,
    "dense_units_1": 64,
    "dense_dropout_1": 0.2,
}


def _trial_s(folds: list[Any], params: dict[str, Any], epochs: int, seed: int) -> float:
    """Wall time of one lockstep trial over `folds`: build, train `epochs`, score."""
    from hpo.train import LockstepCV

    start = time.perf_counter()
    cv = LockstepCV(folds, params, max_epochs=epochs, patience=epochs, seed=seed)
    while not cv.done:
        cv.step()
    cv.finish()
    return time.perf_counter() - start


def _head(name: str, folds: list[Any], params: dict[str, Any], epochs: int, seed: int) -> dict:
    _trial_s(folds[:1], params, 1, seed)  # warm the process: TensorFlow's first-op costs
    one = _trial_s(folds[:1], params, epochs, seed)
    batched = _trial_s(folds, params, epochs, seed)
    separate = sum(_trial_s([fold], params, epochs, seed) for fold in folds)
    print(f"{name}: 1 fold {one:.2f} s, {len(folds)} folds {batched:.2f} s", flush=True)
    return {
        "epochs": epochs,
        "one_fold_s": round(one, 2),
        "k_folds_s": round(batched, 2),
        "ratio": round(batched / one, 3),
        "k_separate_s": round(separate, 2),
        "separate_over_batched": round(separate / batched, 3),
    }


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure P6 for both heads, write bench/results/p6_folds.json and return the record."""
    parser = argparse.ArgumentParser(prog="bench p6", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs-small", type=int, default=20)
    parser.add_argument("--epochs-paper", type=int, default=5)
    add_feature_args(parser)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from hpo.train import PAPER_BEST, TrialSettings, configure_tensorflow, fold_data
    from tests.support.featuresets import synthetic_feature_set, synthetic_split

    fs = synthetic_feature_set(
        clips=args.clips, frames=args.frames, dim=args.dim, signal=0.3, seed=args.seed
    )
    split = synthetic_split(fs, k=5)
    configure_tensorflow(TrialSettings("file:///unused", "unused", split))
    folds = fold_data(fs.features, fs.labels, fs.clip_ids, split, seed=args.seed)
    load_before = machine()["load_average_1m"]
    heads = {
        "small": _head("small", folds, {**PAPER_BEST, **SMALL}, args.epochs_small, args.seed),
        "paper": _head("paper", folds, dict(PAPER_BEST), args.epochs_paper, args.seed),
    }
    record = {
        "metric": "P6",
        "value": heads["small"]["ratio"],
        "goal": "<= 2.0 (small head)",
        "heads": heads,
        "folds": len(folds),
        "features": [args.clips, args.frames, args.dim],
        "load_average_1m_before": load_before,
        "machine": machine(),
    }
    return write_record(record, args.out)

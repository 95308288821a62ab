"""P2: what running a study under lushpo costs against a plain sequential Optuna loop.

P2 = wall time of `hpo.study.run_study` (N trials, local Ray instance started and stopped inside
the timing, checkpoints, Optuna RDB storage, progress callback) ÷ wall time of a plain
``optuna`` ask/tell loop that runs the same training function (`hpo.trainable.cross_validate`,
the maths `train_cv` wraps) on the same features, same search space, same N, same TPE seed.
Goal: ≤ 1.05 on the 2-core development machine.

lushpo runs once per ``--concurrency`` value, side by side with the one baseline: 1 (one trial
at a time with every core: the cost of Ray, checkpoints and storage alone) and the machine's core
count (one single-threaded trial per core: what `lushpo tune` does with ``max_concurrent`` set to
the cores). P2 is the ratio of the last value listed. With N below TPE's 10 random start-up
trials every run samples the same configs (checked: ``same_configs``).

The features are synthetic but shaped like the paper's Xception-20 set (119 clips × 20 frames ×
2048) so a trial costs what a real one does; the split is a stratified 5-fold split of them.
Trials must be long against Ray's fixed costs (≈ 15-20 s to start a local instance here), so N
and max_epochs are chosen to make the baseline run for minutes.

    python -m bench p2            # or: python -c "from bench.p2_study import run; run()"
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._record import machine, write_record

__all__ = ["run"]

RESULTS = Path(__file__).resolve().parent / "results" / "p2_study.json"

# A modest space of heads (paper-sized heads take ~5 s per lockstep epoch here).
SPACE = {
    "lstm_units": [64, 128],
    "dense_layers": 1,
    "dense_units_1": [64, 128],
    "batch_size": [16, 32],
}


def _baseline(
    store_uri: str, key: str, split: Any, space: dict, args: argparse.Namespace
) -> tuple[float, list[float], list[dict]]:
    """The plain loop: one process, TPE ask/tell, cross_validate per trial."""
    import optuna

    from hpo.trainable import TrialSettings, configure_tensorflow, cross_validate
    from pipeline.store import open_store

    configure_tensorflow(
        TrialSettings(store_uri=store_uri, feature_sets=key, split=split, seed=args.seed)
    )
    start = time.perf_counter()
    fs = open_store(store_uri).get(key)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed)
    )
    values, configs = [], []
    for _ in range(args.trials):
        trial = study.ask(fixed_distributions=space)
        result = cross_validate(
            fs.features,
            fs.labels,
            fs.clip_ids,
            split,
            trial.params,
            max_epochs=args.max_epochs,
            patience=args.max_epochs,
            validation_fraction=0.2,
            seed=args.seed,
        )
        value = float(result.metrics["accuracy"])
        study.tell(trial, value)
        values.append(value)
        configs.append(trial.params)
    return time.perf_counter() - start, values, configs


def _lushpo(
    store_uri: str, runs: Path, concurrent: int, args: argparse.Namespace
) -> tuple[float, list[float], list[dict]]:
    from hpo.config import from_dict
    from hpo.study import run_study

    cfg = from_dict(
        {
            "name": "p2",
            "store": store_uri,
            "feature_set": {"backbone": "synthetic", "frames": args.frames},
            "split": {"kind": "stratified", "k": 5, "seed": args.seed},
            "space": SPACE,
            "budget": {
                "trials": args.trials,
                "max_concurrent": concurrent,
                "max_epochs": args.max_epochs,
                "patience": args.max_epochs,
            },
            "searcher": {"sampler": "tpe", "seed": args.seed},
            "training": {"seed": args.seed},
            "resources": {
                "cpu": 1 if concurrent > 1 else os.cpu_count() or 1,
                "intra_op_threads": 1 if concurrent > 1 else None,
            },
            "storage": {"storage_path": str(runs)},
            "num_cpus": os.cpu_count(),
        },
        source="bench/p2_study.py",
    )
    start = time.perf_counter()
    result = run_study(cfg, log=lambda line: None)
    elapsed = time.perf_counter() - start
    done = [t for t in result.trials if t.value is not None]
    return elapsed, [t.value for t in done], [t.params for t in done]


def _same_configs(a: list[dict], b: list[dict], space: dict) -> bool:
    """The same configs were sampled, in any order (concurrent trials finish out of order)."""

    def canon(configs: list[dict]) -> list[str]:
        return sorted(repr(sorted((k, c[k]) for k in space)) for c in configs)

    return len(a) == len(b) and canon(a) == canon(b)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure P2 once, write bench/results/p2_study.json and return the record."""
    parser = argparse.ArgumentParser(prog="bench p2", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--max-epochs", type=int, default=25)
    parser.add_argument("--clips", type=int, default=119)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, os.cpu_count() or 1],
        help="lushpo's max_concurrent, one lushpo run each (P2 uses the last)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from hpo.config import from_dict
    from hpo.study import _search_space, compute_split  # what the study itself searches/splits
    from pipeline.store import open_store
    from tests.support.featuresets import synthetic_feature_set

    with tempfile.TemporaryDirectory(prefix="lushpo-p2-") as tmp:
        root = Path(tmp)
        fs = synthetic_feature_set(
            clips=args.clips, frames=args.frames, dim=args.dim, signal=0.3, seed=args.seed
        )
        (root / "store").mkdir()
        store_uri = (root / "store").as_uri()
        key = open_store(store_uri).put(fs)

        # The study's split and space, computed the way the study computes them.
        cfg = from_dict(
            {
                "name": "p2",
                "store": store_uri,
                "split": {"kind": "stratified", "k": 5, "seed": args.seed},
                "space": SPACE,
            }
        )
        split = compute_split(cfg, key, "driver")
        space = _search_space(cfg)

        baseline_s, baseline_values, baseline_configs = _baseline(
            store_uri, key, split, space, args
        )
        runs = {}
        for concurrent in args.concurrency:
            lushpo_s, values, configs = _lushpo(
                store_uri, root / f"runs-{concurrent}", concurrent, args
            )
            runs[str(concurrent)] = {
                "lushpo_wall_s": round(lushpo_s, 2),
                "ratio": round(lushpo_s / baseline_s, 4),
                "same_configs": _same_configs(configs, baseline_configs, space),
                "lushpo_accuracies": values,
            }

    last = runs[str(args.concurrency[-1])]
    record = {
        "metric": "P2",
        "value": last["ratio"],
        "goal": "<= 1.05",
        "lushpo_wall_s": last["lushpo_wall_s"],
        "baseline_wall_s": round(baseline_s, 2),
        "lushpo_max_concurrent": args.concurrency[-1],
        "by_max_concurrent": runs,
        "trials": args.trials,
        "max_epochs": args.max_epochs,
        "early_stopping": "off (patience = max_epochs)",
        "features": f"synthetic float32 [{args.clips}, {args.frames}, {args.dim}], 5-fold "
        "stratified split",
        "space": SPACE,
        "seed": args.seed,
        "baseline_accuracies": baseline_values,
        "includes": "lushpo: ray.init + Tuner.fit + checkpoints (default cadence) + Optuna "
        "sqlite + shutdown; "
        "baseline: store read + optuna in-memory ask/tell + cross_validate",
        "machine": machine(),
    }
    return write_record(record, args.out)


if __name__ == "__main__":
    run()

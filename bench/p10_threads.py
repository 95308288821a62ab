"""P10: trials per hour of 4 concurrent one-CPU trials, TensorFlow's thread pools sized by the
trial's CPUs (lushpo's default) against TensorFlow's own default (every core of the node, what
lushpo did before: ``resources.intra_op_threads: 0``), side by side in one run.

Both contenders are ``lushpo tune`` of the same study (same features, split, seed, space and
budget) at ``max_concurrent: 4`` with ``resources.cpu: 1``, on a local Ray instance that offers
4 CPUs whatever the machine has (``num_cpus: 4``), as ``configs/paper-grid.yaml`` runs on a
node: only ``resources.intra_op_threads`` and ``inter_op_threads`` differ. Each contender is a
fresh process timed from start to exit; trials per hour = trials ÷ that wall time. The
trials' own mean duration (Optuna's start and end times) is recorded beside it. The features are
synthetic, shaped like the paper's Xception-20 set (119 clips × 20 frames × 2048).

    python -m bench p10 [--trials N] [--max-epochs E]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._record import add_feature_args, machine, write_record
from bench.p2_study import _timed, study_yaml, synthetic_store

__all__ = ["run"]

RESULTS = Path(__file__).resolve().parent / "results" / "p10_threads.json"
CONCURRENT = 4


def _trial_seconds(run_dir: Path) -> list[float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir}/optuna.db")
    return [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.trials
        if t.value is not None
    ]


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure P10, write bench/results/p10_threads.json, return the record."""
    parser = argparse.ArgumentParser(prog="bench p10", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=15)
    add_feature_args(parser)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    contenders: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lushpo-p10-") as tmp:
        root = Path(tmp)
        store_uri, _key, env = synthetic_store(root, args)
        lushpo = str(Path(sys.executable).with_name("lushpo"))
        # the new default first, then the old one: a warm disk cache favours the second
        for name, threads in (("trial-cpus", None), ("tensorflow-default", 0)):
            resources: dict[str, Any] = {"cpu": 1}
            if threads is not None:
                resources |= {"intra_op_threads": threads, "inter_op_threads": threads}
            config = study_yaml(
                root, store_uri, args, name=name, concurrent=CONCURRENT, resources=resources,
                num_cpus=CONCURRENT,
            )  # fmt: skip
            timed = _timed([lushpo, "tune", "--config", str(config)], env)
            del timed["stdout"]
            seconds = _trial_seconds(root / "runs" / name)
            if len(seconds) != args.trials:
                raise RuntimeError(f"{name} finished {len(seconds)} of {args.trials} trials")
            contenders[name] = {
                **timed,
                "trials_per_hour": round(args.trials / timed["wall_s"] * 3600, 1),
                "mean_trial_s": round(sum(seconds) / len(seconds), 2),
            }
    new, old = contenders["trial-cpus"], contenders["tensorflow-default"]
    record = {
        "metric": "P10",
        "value": round(new["trials_per_hour"] / old["trials_per_hour"], 4),
        "meaning": "trials per hour, threads = the trial's CPUs ÷ TensorFlow's default",
        "goal": "> 1 where trials side by side outnumber the cores",
        "contenders": contenders,
        "concurrent_trials": CONCURRENT,
        "cpu_per_trial": 1,
        "trials": args.trials,
        "max_epochs": args.max_epochs,
        "features": f"synthetic float32 [{args.clips}, {args.frames}, {args.dim}], 5-fold "
        "stratified split",
        "timing": "each contender a fresh process, from start to exit (imports included)",
        "machine": machine(),
    }
    return write_record(record, args.out)


if __name__ == "__main__":
    run(sys.argv[1:])

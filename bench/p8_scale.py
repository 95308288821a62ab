"""P8: the study driver's cost per trial as studies grow, 10, 100 and 500 trials in one run.

Each study runs on the local Ray instance at ``max_concurrent: 1`` with a trial that trains
nothing (`tests.support.trivial_trial`, one epoch, no sleep), so a study's wall time is the
driver's work (Tune's loop, the searcher's asks and tells on Optuna's sqlite storage, results,
saves) plus the trials' own time. Cost per trial = (wall time - the trials' own time, each from
its start to its last report) / trials. Ray starts once, before the first study, and is not
counted. Goal: the cost per trial at 500 trials within 1.2x its cost at 10.

    python -m bench p8 [--sizes 10,100,500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._record import machine, write_record

__all__ = ["run"]

RESULTS = Path(__file__).resolve().parent / "results" / "p8_scale.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench p8", description=__doc__)
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    import ray

    from hpo.search import from_dict, run_study
    from pipeline.store import open_store
    from tests.support.featuresets import synthetic_feature_set
    from tests.support.trivial_trial import train_trivial

    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lushpo-p8-") as tmp:
        root = Path(tmp)
        (root / "store").mkdir()
        store_uri = (root / "store").as_uri()
        open_store(store_uri).put(synthetic_feature_set(clips=8, frames=3, dim=4))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            for n in sizes:
                cfg = from_dict(
                    {"name": f"scale-{n}", "store": store_uri,
                     "feature_set": {"backbone": "synthetic", "frames": 3},
                     "split": {"kind": "stratified", "k": 2, "seed": 0},
                     "space": {"lstm_units": [4, 8, 16], "dense_layers": 1,
                               "dense_units_1": [4], "batch_size": [8],
                               "learning_rate": {"low": 1e-3, "high": 3e-2}},
                     "budget": {"trials": n, "max_concurrent": 1, "max_epochs": 1,
                                "patience": 1},
                     "searcher": {"sampler": "tpe", "seed": 0}, "resources": {"cpu": 1},
                     "storage": {"storage_path": str(root / "runs")},
                     "cache_dir": str(root / "cache")},
                    source="bench p8",
                )  # fmt: skip
                started = time.perf_counter()
                result = run_study(cfg, log=lambda _line: None, train=train_trivial)
                wall = time.perf_counter() - started
                own = sum(t.metrics["reported_at"] - t.metrics["started_at"] for t in result.trials)
                runs[str(n)] = {
                    "trials": len(result.trials),
                    "wall_s": round(wall, 2),
                    "trials_own_s": round(own, 2),
                    "driver_s_per_trial": round((wall - own) / n, 4),
                }
        finally:
            ray.shutdown()
    first, last = runs[str(sizes[0])], runs[str(sizes[-1])]
    record = {
        "metric": "P8",
        "value": round(last["driver_s_per_trial"] / first["driver_s_per_trial"], 4),
        "goal": f"<= 1.2 (driver cost per trial at {sizes[-1]} / at {sizes[0]})",
        "runs": runs,
        "includes": "Tune's loop, our searcher's ask/tell on sqlite, results and experiment "
        "saves, the final reconcile; excludes Ray's start (once, before the first study)",
        "machine": machine(),
    }
    return write_record(record, args.out)


if __name__ == "__main__":
    run()

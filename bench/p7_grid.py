"""P7: a grid run as one Ray Tune experiment against cell by cell, side by side in one run.

On a 2-node cluster started with the ``ray`` CLI (2 CPUs a node, 1 CPU a trial: 4 trial slots),
a grid of 4 cells x 4 trials at ``max_concurrent: 1`` per cell runs two ways:

- ``one_experiment``: `hpo.search.run_grid`, every cell's study searched by one experiment;
- ``cell_by_cell``: `hpo.search.run_study` for each cell in turn (what lushpo did before).

Trials train nothing (`tests.support.trivial_trial`, ``--epoch-s`` seconds an epoch), so the
numbers measure scheduling, not TensorFlow. Slot occupancy is busy slot-seconds (each trial from
its start to its last report, as the trial's own clock says) / (slots x the call's wall time).
Goal: occupancy >= 0.8 as one experiment, and its wall time <= 0.35 x cell by cell.

    python -m bench p7 [--cells 4] [--trials 4] [--epochs 4] [--epoch-s 5]
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

RESULTS = Path(__file__).resolve().parent / "results" / "p7_grid.json"
SLOTS = 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench p7", description=__doc__)
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--trials", type=int, default=4, help="trials per cell")
    parser.add_argument("--epochs", type=int, default=4)
    # 20-second trials: far shorter than a real one, long enough that the call's fixed start
    # (about 10 s on 2 cores: Ray connection, 4 worker processes importing Ray Tune) does not
    # dominate the occupancy
    parser.add_argument("--epoch-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def _config(root: Path, store_uri: str, name: str, address: str, args) -> Any:
    from hpo.search import from_dict

    return from_dict(
        {
            "name": name,
            "address": address,
            "store": store_uri,
            "feature_set": {
                "backbone": "synthetic",
                "frames": list(range(2, 2 + args.cells)),
                "grid": True,
            },
            "split": {"kind": "stratified", "k": 2, "seed": 0},
            "space": {"lstm_units": [4, 8, 16], "dense_layers": 1, "dense_units_1": [4],
                      "batch_size": [8], "learning_rate": {"low": 1e-3, "high": 3e-2}},
            "budget": {"trials": args.trials, "max_concurrent": 1, "max_epochs": args.epochs,
                       "patience": args.epochs},
            "searcher": {"sampler": "tpe", "seed": 0},
            "resources": {"cpu": 1},
            "storage": {"storage_path": str(root / "runs")},
            "cache_dir": str(root / "cache-{node_id}"),
        },
        source="bench p7",
    )  # fmt: skip


def _occupancy(results: dict[str, Any], wall_s: float) -> dict[str, Any]:
    spans = [
        (t.metrics["started_at"], t.metrics["reported_at"])
        for result in results.values()
        for t in result.trials
        if "started_at" in t.metrics
    ]
    busy = sum(end - start for start, end in spans)
    span = max(end for _, end in spans) - min(start for start, _ in spans)
    return {
        "wall_s": round(wall_s, 2),
        "trials": len(spans),
        "busy_slot_s": round(busy, 2),
        "occupancy": round(busy / (SLOTS * wall_s), 4),
        # the same from the first trial's start to the last one's end: scheduling alone,
        # without the call's fixed start (Ray connection, worker processes, studies made)
        "occupancy_while_trials_ran": round(busy / (SLOTS * span), 4),
    }


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)

    from tests.support.ray_cli import RayCLICluster

    cluster = RayCLICluster(dict(os.environ), token=True)
    # before Ray's core loads in this process: it reads the token mode once
    os.environ.update({k: v for k, v in cluster.env.items() if k.startswith("RAY_AUTH")})

    from tests.support.trivial_trial import EPOCH_ENV, train_trivial

    cluster.env[EPOCH_ENV] = str(args.epoch_s)  # the cluster's workers inherit it

    from hpo.search import cell_configs, run_grid, run_study
    from pipeline.store import open_store
    from tests.support.featuresets import synthetic_feature_set

    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lushpo-p7-") as tmp:
        root = Path(tmp)
        store_uri = (root / "store").as_uri()
        (root / "store").mkdir()
        store = open_store(store_uri)
        for frames in range(2, 2 + args.cells):
            store.put(synthetic_feature_set(clips=8, frames=frames, dim=4))
        cluster.start(worker_cpus=(2,), head_cpus=2)
        try:
            quiet = lambda _line: None  # noqa: E731
            grid = _config(root, store_uri, "one", cluster.address, args)
            started = time.perf_counter()
            results = run_grid(grid, log=quiet, train=train_trivial)
            runs["one_experiment"] = _occupancy(results, time.perf_counter() - started)

            cells = cell_configs(_config(root, store_uri, "cells", cluster.address, args))
            started = time.perf_counter()
            results = {c.name: run_study(c, log=quiet, train=train_trivial) for c in cells}
            runs["cell_by_cell"] = _occupancy(results, time.perf_counter() - started)
        finally:
            cluster.stop()
    ratio = runs["one_experiment"]["wall_s"] / runs["cell_by_cell"]["wall_s"]
    record = {
        "metric": "P7",
        "value": round(ratio, 4),
        "goal": "wall time <= 0.35 x cell by cell; one experiment's occupancy >= 0.8",
        "occupancy_one_experiment": runs["one_experiment"]["occupancy"],
        "runs": runs,
        "grid": {
            "cells": args.cells,
            "trials_per_cell": args.trials,
            "max_concurrent": 1,
            "slots": SLOTS,
            "epochs": args.epochs,
            "epoch_s": args.epoch_s,
        },
        "cluster": "ray start --head --num-cpus 2, ray start --address --num-cpus 2 (loopback)",
        "machine": machine(),
    }
    return write_record(record, args.out)


if __name__ == "__main__":
    run()

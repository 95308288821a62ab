"""P11: what the feature store saves, and how long it waits on an outage, side by side in one run.

Two ratios, each from numbers measured in this run (the tests assert the events: a second run
extracts nothing, an outage ends with "still failing after N s of retries"; this measures the
time those events take):

- ``second_run_ratio``: the wall time of a second ``lushpo features`` of the same feature set
  (found in the store, nothing extracted) ÷ the first (extracted), each a fresh process from
  start to exit. Goal: <= 0.5; the floor is the CLI's start-up and the store lookup.
- ``outage_ratio``: the seconds a feature-set read takes to give up on an S3 endpoint (moto on
  loopback) that stopped answering ÷ its outage window (``outage_s``, 10 s by default).
  Goal: <= 1.5, i.e. retries end about when the window does (the docstring of
  `pipeline.store` bounds it by one more call).

    python -m bench p11 [--backbone mobilenetv2] [--frames 2] [--outage-s 10]

The clips are ``$LUSHPO_DATA_DIR``'s (else ../shared/data); the backbone runs without weights,
since the store's work, not the network's, is measured.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

from bench._record import machine, write_record

__all__ = ["run"]

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "p11_store.json"


def _features(argv: list[str], env: dict[str, str]) -> float:
    """Seconds of one ``lushpo features`` run, a fresh process from start to exit."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[1:3]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall


def _second_run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    lushpo = str(Path(sys.executable).with_name("lushpo"))
    argv = [lushpo, "features", "--backbone", args.backbone, "--frames", str(args.frames),
            "--weights", "none", "--store", (root / "store").as_uri(),
            "--data-dir", str(args.data_dir)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUSHPO_")}
    env |= {"PYTHONPATH": str(REPO), "LUSHPO_HOME": str(root / "home")}
    first = _features(argv, env)
    second = _features(argv, env)
    return {"first_s": round(first, 2), "second_s": round(second, 2),
            "second_run_ratio": round(second / first, 4)}  # fmt: skip


def _outage(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import boto3

    from pipeline.store import S3Store, StoreUnavailableError, open_store
    from tests.support.featuresets import synthetic_feature_set
    from tests.support.s3 import S3Endpoint

    endpoint = S3Endpoint().start()
    aws = {"AWS_ENDPOINT_URL": endpoint.url, "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    try:
        with mock.patch.dict(os.environ, aws):  # put back as it was, whatever happens
            boto3.client("s3").create_bucket(Bucket="bench")
            fs = synthetic_feature_set(clips=6, frames=2, dim=64)
            key = open_store("s3://bench/p11", cache_dir=root / "writer").put(fs)
            endpoint.stop()  # the endpoint stops answering: every call is refused
            store = S3Store("bench", "p11", root / "reader", outage_s=args.outage_s)
            start = time.perf_counter()
            try:
                store.get(key)
            except StoreUnavailableError:
                gave_up = time.perf_counter() - start
            else:
                raise RuntimeError("a read from a stopped endpoint succeeded")
    finally:
        endpoint.stop()  # (again: a no-op once stopped)
    return {"outage_s": args.outage_s, "gave_up_after_s": round(gave_up, 2),
            "outage_ratio": round(gave_up / args.outage_s, 4)}  # fmt: skip


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure P11, write bench/results/p11_store.json, return the record."""
    parser = argparse.ArgumentParser(prog="bench p11", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--outage-s", type=float, default=10.0)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("LUSHPO_DATA_DIR") or REPO.parent / "shared" / "data"),
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lushpo-p11-") as tmp:
        second = _second_run(args, Path(tmp))
        outage = _outage(args, Path(tmp))
    record = {
        "metric": "P11",
        "second_run_ratio": second.pop("second_run_ratio"),
        "outage_ratio": outage.pop("outage_ratio"),
        "goal": "second_run_ratio <= 0.5; outage_ratio <= 1.5",
        "features": second
        | {
            "backbone": args.backbone,
            "frames": args.frames,
            "weights": "none",
            "data_dir": str(args.data_dir),
        },
        "outage": outage | {"endpoint": "moto server on loopback, stopped before the read"},
        "timing": "features: each run a fresh process, from start to exit",
        "machine": machine(),
    }
    return write_record(record, args.out)


if __name__ == "__main__":
    run(sys.argv[1:])

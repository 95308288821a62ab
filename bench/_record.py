"""What every benchmark records beside its number, and how its JSON lands (temp + rename)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from pipeline.files import atomic_write_text

__all__ = ["add_feature_args", "machine", "write_record"]


def machine() -> dict[str, Any]:
    """Where the number was measured; the load average says how shared the CPU was."""
    import tensorflow as tf

    return {
        "node": platform.node(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def write_record(record: dict[str, Any], out: Path) -> dict[str, Any]:
    """Stamp `record`, write it to `out` atomically and print it."""
    record = {**record, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return record


def add_feature_args(parser: argparse.ArgumentParser) -> None:
    """``--clips --frames --dim`` of the synthetic feature set (the paper's Xception-20 shape by
    default) and ``--seed``."""
    parser.add_argument("--clips", type=int, default=119)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)

"""A trial that trains nothing: results shaped as `hpo.train.train_cv` reports them, a score
computed from the params, a checkpoint every `checkpoint_every` epochs. For tests and benchmarks
of the study's own machinery (search, resume, records), where TensorFlow is not the point."""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ray import tune

from hpo.train import HISTORY, TrialSettings

__all__ = ["EPOCH_ENV", "FAIL_ENV", "KILL_FILE_ENV", "score", "train_trivial"]

FAIL_ENV = "LUSHPO_TEST_FAIL_LSTM_UNITS"  # trials with this lstm_units raise
EPOCH_ENV = "LUSHPO_TEST_EPOCH_S"  # seconds per epoch (default 0)
# When the file this names exists, the next checkpoint upload kills the process group it names
# (the driver and its Ray instance) while it runs; the file is removed first (one kill).
KILL_FILE_ENV = "LUSHPO_TEST_KILL_FILE"


def score(config: dict[str, Any]) -> float:
    """The trial's "test accuracy": a smooth function of its params, in (0, 1)."""
    lr = float(config.get("learning_rate", 0.01))
    units = float(config.get("lstm_units", 8))
    return round(0.5 + 0.4 * math.exp(-((math.log10(lr) + 2) ** 2)) + units / 1000, 6)


def _kill_during_upload() -> None:
    kill_file = os.environ.get(KILL_FILE_ENV)
    if not kill_file:
        return
    try:
        group = int(Path(kill_file).read_text())
        os.remove(kill_file)
    except (FileNotFoundError, ValueError):
        return
    print("KILLED here", flush=True)
    threading.Timer(0.02, os.killpg, (group, signal.SIGKILL)).start()


def train_trivial(config: dict[str, Any], settings: TrialSettings) -> None:
    if str(config.get("lstm_units")) == os.environ.get(FAIL_ENV):
        raise RuntimeError(f"lstm_units={config['lstm_units']}: this trial was made to fail")
    pause = float(os.environ.get(EPOCH_ENV, "0"))
    value = score(config)
    started_at = time.time()  # wall clock, for the benchmarks' slot occupancy
    first = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            first = json.loads(Path(folder, "epoch.json").read_text())["epoch"] + 1
    val = 0.0
    for epoch in range(first, settings.max_epochs + 1):
        time.sleep(pause)
        val = value * epoch / settings.max_epochs
        metrics = {HISTORY: [[epoch, val]], "val_accuracy": val, "test_accuracy": None,
                   "final": False, "epoch": epoch, "started_at": started_at,
                   "reported_at": time.time()}  # fmt: skip
        every = settings.checkpoint_every
        if not every or epoch % every:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "epoch.json").write_text(json.dumps({"epoch": epoch}))
            _kill_during_upload()
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    tune.report(
        {HISTORY: [], "val_accuracy": val, "test_accuracy": value, "accuracy": value,
         "final": True, "epoch": settings.max_epochs, "started_at": started_at,
         "reported_at": time.time()}
    )  # fmt: skip

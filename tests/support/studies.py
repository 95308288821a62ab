"""The tests' tiny studies: one search space and one config that each test reshapes with the
sections it is about, so a change of the config's shape is made here once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Small heads (a second each on 2 cores); the learning rate is high enough that 2 epochs move.
TINY_SPACE = {
    "lstm_units": [8, 16],
    "dense_layers": 1,
    "dense_units_1": [8, 16],
    "batch_size": [8, 16],
    "learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
}

# test_resume's study, which test_faults and test_postgres_storage resume too
CHECKPOINTED_TRIALS = 6
CHECKPOINTED_EPOCHS = 2


def with_sections(data: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """`data` with each keyword merged into its section (a mapping) or replacing the value."""
    data = dict(data)
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def tiny_study(tmp_path: Path, store_uri: str, name: str = "s", **sections: Any) -> dict[str, Any]:
    """A study config of 3 trials, 2 epochs, 3 folds of a synthetic set with 4 frames, one trial
    at a time on one thread; `sections` reshape it (`with_sections`)."""
    data = {
        "name": name,
        "store": store_uri,
        "feature_set": {"backbone": "synthetic", "frames": 4},
        "split": {"kind": "stratified", "k": 3, "seed": 0},
        "space": TINY_SPACE,
        "budget": {"trials": 3, "max_concurrent": 1, "max_epochs": 2, "patience": 2},
        "searcher": {"sampler": "tpe", "seed": 7},
        "resources": {"cpu": 1, "intra_op_threads": 1},
        "storage": {"storage_path": str(tmp_path / "runs")},
        "cache_dir": str(tmp_path / "cache"),
    }
    return with_sections(data, **sections)


def checkpointed_study(
    tmp_path: Path, store_uri: str, name: str, **sections: Any
) -> dict[str, Any]:
    """`tiny_study` as the resume tests kill it: 6 trials of 2 epochs on 2 folds of 3 frames,
    a checkpoint after every epoch, one retry, on a Ray instance of 2 CPUs."""
    base = tiny_study(
        tmp_path,
        store_uri,
        name,
        num_cpus=2,
        feature_set={"frames": 3},
        split={"k": 2},
        space={"lstm_units": [4, 8], "dense_units_1": [4, 8]},
        budget={
            "trials": CHECKPOINTED_TRIALS,
            "max_epochs": CHECKPOINTED_EPOCHS,
            "patience": CHECKPOINTED_EPOCHS,
            "checkpoint_every": 1,
            "checkpoint_interval_s": 0,
            "max_failures": 1,
        },
        searcher={"seed": 3},
    )
    return with_sections(base, **sections)

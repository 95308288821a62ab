"""A real trial checkpoint without Ray: `hpo.train.cross_validate` + `write_trial` on a tiny
synthetic feature set in a file:// store, for tests of export, evaluate and predict."""

from __future__ import annotations

from pathlib import Path

from hpo.train import cross_validate, write_trial
from pipeline.manifest import Split
from pipeline.store import FeatureSet, open_store

__all__ = ["TINY_PARAMS", "make_checkpoint"]

TINY_PARAMS = {
    "lstm_units": 8,
    "lstm_dropout": 0.0,
    "recurrent_dropout": 0.0,
    "dense_layers": 1,
    "dense_units_1": 8,
    "dense_dropout_1": 0.0,
    "learning_rate": 0.01,
    "batch_size": 8,
}


def make_checkpoint(
    directory: Path,
    store_uri: str,
    key: str,
    split: Split,
    *,
    params: dict | None = None,
    max_epochs: int = 3,
    seed: int = 0,
) -> tuple[Path, FeatureSet]:
    """Train the trial's fold models for a few epochs and write its final checkpoint.

    Returns:
        (checkpoint folder holding ``fold-{i}.h5`` and ``trial.json``, the feature set).
    """
    fs = open_store(store_uri).get(key)
    result = cross_validate(
        fs.features,
        fs.labels,
        fs.clip_ids,
        split,
        params or TINY_PARAMS,
        max_epochs=max_epochs,
        patience=max_epochs,
        seed=seed,
    )
    training = {"seed": seed, "max_epochs": max_epochs, "store_uri": store_uri}
    write_trial(
        directory,
        result,
        params=params or TINY_PARAMS,
        feature_set=key,
        split=split,
        training=training,
    )
    return directory, fs

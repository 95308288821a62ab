"""The model card: its file, its reader, and the figures export writes into it and evaluate reads
back (out-of-fold predictions, the pooled confidence intervals, the spatial baseline, the claim)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpo.results._baseline import linear_probe, temporal_claim
from hpo.search import (
    selected_on,
)
from hpo.train import (
    bootstrap_ci,
    fold_metrics,
    predict_proba,
)
from pipeline.manifest import Split

__all__ = [
    "CARD",
    "ExportError",
    "claim",
    "confidence",
    "fold_predictions",
    "read_card",
    "spatial_baseline",
]

CARD = "model_card.json"


CARD_FORMAT = "lushpo-model-card/1"


_LIBRARIES = (
    "lushpo",
    "tensorflow",
    "keras",
    "numpy",
    "scikit-learn",
    "ray",
    "optuna",
    "opencv-python-headless",
    "h5py",
)


class ExportError(RuntimeError):
    """The run holds no exportable trial, or the output folder cannot be written."""


def read_card(directory: Path | str) -> dict:
    """The model card of an exported folder.

    Raises:
        FileNotFoundError: naming the folder when it has no model_card.json (export incomplete).
        ValueError: when the card is not JSON or has another format.
    """
    path = Path(directory) / CARD
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {directory} is not a finished `lushpo export` folder"
        )
    try:
        card = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{path}: format {card.get('format')!r}, expected {CARD_FORMAT!r}")
    return card


def _select(fs: Any, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    position = {clip: i for i, clip in enumerate(fs.clip_ids)}
    missing = [clip for clip in ids if clip not in position]
    if missing:
        raise ExportError(
            f"feature set {fs.spec.key()} lacks {len(missing)} clips of the trial's split, "
            f"e.g. {missing[:3]}"
        )
    rows = [position[clip] for clip in ids]
    return np.asarray(fs.features[rows], dtype=np.float32), np.asarray(fs.labels)[rows]


def fold_predictions(
    directory: Path, split: dict, features: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]
) -> tuple[list[dict], dict[str, tuple[int, int]]]:
    """Each ``fold-{i}.h5`` in `directory`, loaded the way users load it, scored on its test fold.

    Returns the per-fold metrics and the pooled out-of-fold predictions, clip id → (true label,
    predicted label). `features(ids)` gives those clips' features and labels."""
    import tensorflow as tf

    folds: list[dict[str, Any]] = []
    pooled: dict[str, tuple[int, int]] = {}
    for i, fold in enumerate(split["folds"]):
        # compile=False: scoring needs no optimizer (and Keras would warn about its absence)
        model = tf.keras.models.load_model(directory / f"fold-{i}.h5", compile=False)
        x, y = features(fold["test"])
        pred = predict_proba(model, x).argmax(axis=1)
        folds.append(fold_metrics(y, pred))
        pooled.update(zip(fold["test"], zip(map(int, y), map(int, pred), strict=True), strict=True))
    return folds, pooled


def confidence(pooled: dict[str, tuple[int, int]]) -> dict:
    """`hpo.train.bootstrap_ci` of pooled out-of-fold (true, predicted) labels by clip id."""
    ids = sorted(pooled)
    return bootstrap_ci([pooled[c][0] for c in ids], [pooled[c][1] for c in ids])


def spatial_baseline(fs: Any, split: dict) -> dict:
    """`hpo.results.linear_probe` on the trial's folds, without its per-clip predictions."""

    features = dict(zip(fs.clip_ids, fs.features, strict=True))
    labels = dict(zip(fs.clip_ids, map(int, fs.labels), strict=True))
    probe = linear_probe(features, labels, Split.from_dict(split))
    return {k: v for k, v in probe.items() if k != "predictions"}


def claim(card: dict) -> str:
    """The temporal-vs-spatial sentence for a card (or report) holding ``summary``, ``baseline``,
    ``params`` and optionally ``nested``: on the nested (honest) figure when there is one."""

    nested = card.get("nested") or {}
    honest = nested.get("accuracy", {}).get("mean")
    study = honest if honest is not None else card["summary"]["accuracy"]["mean"]
    return temporal_claim(
        float(study),
        float(card["baseline"]["summary"]["accuracy"]["mean"]),
        honest=honest is not None,
        head=str(card["params"].get("head", "lstm")),
        selected_on=selected_on(card),
    )

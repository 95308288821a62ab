"""Small synthetic, learnable feature sets and splits for tests of the trial, study and export.

A clip's features are Gaussian noise around its class's mean vector, so a tiny LSTM head learns
the three classes in a few epochs; no backbone or video decoding is involved. Clip ids follow the
paper's file-name prefixes (Cov / Pneu / Reg), so labels inferred from names agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from pipeline.manifest import LABELS, Fold, Split
from pipeline.store import FeatureSet, FeatureSetSpec, open_store

__all__ = ["put_synthetic", "synthetic_feature_set", "synthetic_split"]

_PREFIX = {"cov": "Cov", "pne": "Pneu", "reg": "Reg"}


def synthetic_feature_set(
    clips: int = 30,
    frames: int = 5,
    dim: int = 16,
    *,
    backbone: str = "synthetic",
    sampling: str = "even",
    signal: float = 1.5,
    seed: int = 0,
) -> FeatureSet:
    """``clips`` clips (classes balanced round-robin) of ``[frames, dim]`` float32 features.

    ``signal`` scales the distance between class means relative to unit noise: 1.5 is learnable
    by a small head in ~10 epochs; 0 gives pure noise (nothing to learn).
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(clips, dtype=np.int64) % len(LABELS)
    rng.shuffle(labels)
    means = rng.normal(size=(len(LABELS), dim)).astype(np.float32) * signal
    noise = rng.normal(size=(clips, frames, dim)).astype(np.float32)
    features = (noise + means[labels][:, None, :]).astype(np.float32)
    ids = tuple(f"{_PREFIX[LABELS[y]]}-synthetic-{i:03d}.mp4" for i, y in enumerate(labels))
    spec = FeatureSetSpec(
        backbone=backbone,
        weights_sha256="none",
        frames=frames,
        sampling=sampling,
        preprocessing_version="synthetic-1",
        dataset_digest=f"synthetic-{clips}-{dim}-{signal:g}-{seed}",
    )
    meta = {"synthetic": True, "seed": seed, "signal": signal, "skipped": []}
    return FeatureSet(spec=spec, features=features, clip_ids=ids, labels=labels, meta=meta)


def synthetic_split(fs: FeatureSet, k: int = 3, seed: int = 0) -> Split:
    """Stratified ``k``-fold split of ``fs``'s clips (every clip tested exactly once)."""
    ids = np.asarray(fs.clip_ids)
    folds = []
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for train, test in splitter.split(ids, fs.labels):
        folds.append(Fold(train=tuple(ids[train].tolist()), test=tuple(ids[test].tolist())))
    return Split(name="stratified", folds=tuple(folds))


def put_synthetic(root: Path, **kwargs) -> tuple[str, str, FeatureSet]:
    """Write ``synthetic_feature_set(**kwargs)`` to a ``file://`` store at ``root``.

    Returns:
        ``(store_uri, key, feature_set)``.
    """
    root.mkdir(parents=True, exist_ok=True)
    uri = root.resolve().as_uri()
    fs = synthetic_feature_set(**kwargs)
    key = open_store(uri).put(fs)
    return uri, key, fs

"""A trial's fold data: the clips of each fold's train, inner-validation and test split, seeded."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.groups import inner_validation
from pipeline.manifest import Split

__all__ = [
    "FoldData",
    "FoldState",
    "fold_data",
]


def _seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from (trial seed, fold, epoch): independent of run order."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


def _inner_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train, validation) positions; every class keeps one training clip."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(round(fraction * len(members)), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    if not val:  # tiny folds: take one clip of the largest class
        c = np.bincount(labels).argmax()
        pick = next(i for i in train if labels[i] == c)
        train.remove(pick)
        val.append(pick)
    return np.sort(np.asarray(train)), np.sort(np.asarray(val))


@dataclass
class FoldData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_ids: tuple[str, ...]


@dataclass
class FoldState:
    """Early-stopping state of one fold (``best_epoch`` is 1-based; 0 before the first epoch)."""

    best_val_loss: float = math.inf
    best_val_accuracy: float = 0.0
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def fold_data(
    features: np.ndarray,
    labels: np.ndarray,
    clip_ids: Sequence[str],
    split: Split,
    *,
    validation_fraction: float = 0.2,
    seed: int = 0,
    source: str = "the feature set",
) -> list[FoldData]:
    """Select each fold's clips by id and carve a stratified inner validation split (whole groups
    when the split has them, `pipeline.groups.inner_validation`)."""
    position = {cid: i for i, cid in enumerate(clip_ids)}
    labels = np.asarray(labels, dtype=np.int64)
    out = []
    for k, fold in enumerate(split.folds):
        missing = [cid for cid in (*fold.train, *fold.test) if cid not in position]
        if missing:
            raise ValueError(
                f"split {split.name!r} fold {k} names {len(missing)} clip(s) not in {source}, "
                f"e.g. {missing[:3]}"
            )
        train = np.asarray([position[c] for c in fold.train])
        test = np.asarray([position[c] for c in fold.test])
        inner_seed = _seed(seed, k, 1)
        if split.groups is None:
            inner_train, inner_val = _inner_split(labels[train], validation_fraction, inner_seed)
        else:  # a grouped split: validation patients (sources) are never trained on either
            inner_train, inner_val = inner_validation(
                labels[train],
                [split.groups[c] for c in fold.train],
                validation_fraction,
                inner_seed,
            )
        tr, va = train[inner_train], train[inner_val]
        out.append(
            FoldData(
                x_train=np.asarray(features[tr], dtype=np.float32),
                y_train=labels[tr],
                x_val=np.asarray(features[va], dtype=np.float32),
                y_val=labels[va],
                x_test=np.asarray(features[test], dtype=np.float32),
                y_test=labels[test],
                test_ids=tuple(fold.test),
            )
        )
    return out

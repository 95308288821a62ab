"""Write a feature set in the paper's own npy layout, so its `DataSource` reads it unchanged.

The paper (b-mandelbrot/pulmonary-covid19, ``utils/data_source.py``) keeps one directory per
frame count and backbone, ``features/features_{N}/{backbone}/``, holding three parallel arrays with
one row per frame:

- ``features-{D}.npy``: float32 ``[clips * N, D]``;
- ``filenames.npy``: ``"{label}/{clip}-{k}.png"`` for k = 1..N (the clip id keeps its suffix, as in
  ``cross_val.json``), found by ``np.where(filenames == name)``;
- ``labels.npy``: the class index (0 cov, 1 pne, 2 reg) of each row.

Rows are clip-major: row ``i * N + (k - 1)`` is frame k of clip i.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.files import atomic_write
from pipeline.manifest import LABELS
from pipeline.store import FeatureSet

__all__ = ["paper_filenames", "write_paper_layout"]


def paper_filenames(clip_ids: tuple[str, ...], labels: np.ndarray, frames: int) -> np.ndarray:
    """The paper's per-frame names, ``{label}/{clip}-{k}.png``, clip-major (unicode array)."""
    names = [
        f"{LABELS[int(label)]}/{clip}-{k}.png"
        for clip, label in zip(clip_ids, labels, strict=True)
        for k in range(1, frames + 1)
    ]
    return np.array(names, dtype=str)


def write_paper_layout(fs: FeatureSet, dest: Path | str) -> Path:
    """Write `fs` as the paper's three arrays under ``dest/features_{N}/{backbone}/`` (created);
    returns that directory.

    Each file is written under a temporary name and renamed into place, so a reader never sees
    a half-written array. The paper's loader reads it with ``DataSource(seq_length=N,
    features_length=D, features_dir=f"{dest}/features_{N}", model=backbone)``.
    """
    features = np.asarray(fs.features)
    if features.ndim != 3 or not len(features) == len(fs.clip_ids) == len(fs.labels):
        raise ValueError(
            f"feature set {fs.spec.key()}: features {features.shape}, {len(fs.clip_ids)} clip ids "
            f"and {len(fs.labels)} labels do not describe [clips, frames, dim]"
        )
    clips, frames, dim = features.shape
    directory = Path(dest) / f"features_{frames}" / fs.spec.backbone
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        f"features-{dim}.npy": features.reshape(clips * frames, dim).astype(np.float32),
        "filenames.npy": paper_filenames(fs.clip_ids, np.asarray(fs.labels), frames),
        "labels.npy": np.repeat(np.asarray(fs.labels, dtype=np.int64), frames),
    }
    for name, array in arrays.items():
        _save_atomic(directory / name, array)
    return directory


def _save_atomic(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda out: np.save(out, array, allow_pickle=False))

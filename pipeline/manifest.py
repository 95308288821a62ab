"""Clip manifest and cross-validation splits (paper | stratified).

Pure data: a `Manifest` lists the clips found in a data directory; a `Split` says which clip ids
are in each fold's train and test sets. Both are frozen and hashable into a stable digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LABELS: tuple[str, ...] = ("cov", "pne", "reg")
"""Class names in label-index order (0 = COVID-19, 1 = pneumonia, 2 = healthy/regular)."""


@dataclass(frozen=True)
class Clip:
    id: str  # file name as in the paper's cross_val.json, e.g. "Cov-Atlas+(44).gif"
    label: str  # one of LABELS
    path: Path
    frames: int  # frames OpenCV decodes from the file


@dataclass(frozen=True)
class Manifest:
    clips: tuple[Clip, ...]  # sorted by id

    def digest(self) -> str:
        """sha256 over (id, label, frames, file sha256-or-size) of every clip: the dataset hash."""
        raise NotImplementedError


@dataclass(frozen=True)
class Fold:
    train: tuple[str, ...]  # clip ids
    test: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    name: str  # "paper" | "stratified"
    folds: tuple[Fold, ...]

"""Feature store: content-addressed feature sets on file:// or s3://, with a per-node cache."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureSetSpec:
    """Everything that determines a feature set's bytes; its digest is the store key."""

    backbone: str  # registry name, e.g. "xception"
    weights_sha256: str  # sha256 of the weights file, or "none"/"imagenet-<sha>"
    frames: int
    sampling: str  # "even" | "first"
    preprocessing_version: str
    dataset_digest: str  # Manifest.digest()

    def key(self) -> str:
        """Human-readable prefix plus content hash, e.g. "xception-f20-even-3f2a9c1d0b7e"."""
        raise NotImplementedError


@dataclass(frozen=True)
class FeatureSet:
    spec: FeatureSetSpec
    features: np.ndarray  # float32 [clips, frames, dim]
    clip_ids: tuple[str, ...]
    labels: np.ndarray  # int64 [clips], indices into pipeline.manifest.LABELS
    meta: dict  # manifest JSON extras: library versions, created_at, skipped clips, ...


class FeatureStore(ABC):
    """Contract: `put` is atomic (objects under temporary keys, manifest written last);
    `get` verifies every object's sha256 and raises `CorruptObjectError` on mismatch;
    `exists(key)` is true only once the manifest is written."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def put(self, fs: FeatureSet) -> str: ...

    @abstractmethod
    def get(self, key: str) -> FeatureSet: ...

    @abstractmethod
    def list(self) -> list[dict]: ...

"""Reader run in spawned processes by test_store_s3 (a small module: children import it fast)."""

from __future__ import annotations

import hashlib
from typing import Any

from pipeline.store import open_store


def features_digest(uri: str, key: str, cache_dir: str) -> str:
    features = open_store(uri, cache_dir=cache_dir).get(key).features
    return hashlib.sha256(features.tobytes()).hexdigest()


def read_after_barrier(uri: str, key: str, cache_dir: str, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=60)  # all readers start at once
    results.put(features_digest(uri, key, cache_dir))

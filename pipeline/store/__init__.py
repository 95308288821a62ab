"""Feature store: content-addressed feature sets on file:// or s3://, with a per-node cache.

Example::

    store = open_store("file:///data/lushpo-store")  # or "s3://bucket/prefix"
    key = store.put(feature_set)  # a no-op when the key exists
    features = store.get(key).features  # every object sha256-verified
    keys = store.find("xception", 20, "even")
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from pipeline.store._base import (
    BucketNotFoundError,
    CorruptObjectError,
    FeatureSet,
    FeatureSetNotFoundError,
    FeatureSetSpec,
    FeatureStore,
    StoreError,
    StoreUnavailableError,
)
from pipeline.store._cache import DEFAULT_CACHE_DIR
from pipeline.store._local import LocalStore
from pipeline.store._s3 import S3Store

__all__ = [
    "DEFAULT_CACHE_DIR",
    "BucketNotFoundError",
    "CorruptObjectError",
    "FeatureSet",
    "FeatureSetNotFoundError",
    "FeatureSetSpec",
    "FeatureStore",
    "LocalStore",
    "S3Store",
    "StoreError",
    "StoreUnavailableError",
    "open_store",
]

SCHEMES = "file:// (file:///absolute/path) and s3:// (s3://bucket/prefix)"


def open_store(uri: str, cache_dir: Path | str | None = None) -> FeatureStore:
    """The store at `uri`. `cache_dir` is the node cache of remote stores (default
    `~/.cache/lushpo`); local stores are read in place and ignore it.

    Raises:
        ValueError: the URI's scheme is not one of file:// and s3://, or it lacks a path/bucket.
            A URI without a scheme is taken as a local path.
    """
    parts = urlsplit(uri)
    if not parts.scheme:  # a plain path, as users type it on the command line
        return LocalStore(Path(uri).expanduser().resolve())
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path.startswith("/"):
        return LocalStore(Path(unquote(parts.path)))
    if parts.scheme == "s3" and parts.netloc:
        return S3Store(parts.netloc, unquote(parts.path), cache_dir=cache_dir)
    raise ValueError(f"unsupported feature store URI {uri!r}: accepted schemes are {SCHEMES}")

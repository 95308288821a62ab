"""Per-node cache of remote feature sets: download once per node, verify on every read.

Layout: `<root>/featuresets/<key>/` holds the same objects as the store, manifest last; the
lock file `<root>/featuresets/<key>.lock` sits beside it so that all threads and processes on
the node that want one key queue on it, and exactly one of them downloads.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from pipeline.files import atomic_write_bytes, sha256_file
from pipeline.store._base import MANIFEST, PREFIX, CorruptObjectError, check_key, parse_manifest

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("~/.cache/lushpo")


class NodeCache:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root if root is not None else DEFAULT_CACHE_DIR).expanduser().absolute()

    def dir(self, key: str) -> Path:
        return self.root / PREFIX / check_key(key)

    def materialise(
        self,
        key: str,
        fetch_manifest: Callable[[], bytes],
        download: Callable[[str, Path], None],
        where: str,
    ) -> tuple[dict, Path]:
        """Make every object of `key` present and verified in the cache; return (manifest, dir).

        `fetch_manifest()` returns the store's manifest bytes (raising when there is none);
        `download(name, dest)` writes one object to `dest`. A cached object whose sha256 differs
        from the manifest is logged and fetched again; a freshly downloaded one that differs
        means the store itself is corrupt and raises `CorruptObjectError`.
        """
        directory = self.dir(key)
        directory.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(directory.with_name(f"{key}.lock")):
            cached = self._cached_manifest(key, directory)
            fresh = cached is None
            if cached is None:
                manifest_bytes = fetch_manifest()
                manifest = parse_manifest(key, manifest_bytes, where)
                directory.mkdir(exist_ok=True)
            else:
                manifest = cached
            for name, expected in manifest["objects"].items():
                path = directory / name
                if path.is_file():
                    got = sha256_file(path)
                    if got == expected["sha256"]:
                        continue
                    logger.warning(
                        "cached %s of feature set %s is corrupt (sha256 %s, manifest says %s); "
                        "fetching it again from %s",
                        name, key, got, expected["sha256"], where,
                    )  # fmt: skip
                self._fetch(key, name, expected["sha256"], directory, download, where)
            if fresh:
                atomic_write_bytes(directory / MANIFEST, manifest_bytes)
        return manifest, directory

    @staticmethod
    def _cached_manifest(key: str, directory: Path) -> dict | None:
        try:
            return parse_manifest(key, (directory / MANIFEST).read_bytes(), str(directory))
        except FileNotFoundError:
            return None
        except CorruptObjectError:
            logger.warning("cached manifest of %s is unreadable; fetching it again", key)
            return None

    @staticmethod
    def _fetch(
        key: str,
        name: str,
        expected: str,
        directory: Path,
        download: Callable[[str, Path], None],
        where: str,
    ) -> None:
        tmp = directory / f".tmp-{uuid.uuid4().hex}-{name}"
        try:
            download(name, tmp)
            got = sha256_file(tmp)
            if got != expected:
                raise CorruptObjectError(key, name, expected, got, where)
            os.replace(tmp, directory / name)
        finally:
            tmp.unlink(missing_ok=True)

"""`LocalStore`: a feature store on a local or shared POSIX file system (`file:///abs/path`)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from pipeline.store._base import (
    MANIFEST,
    PREFIX,
    FeatureSet,
    FeatureStore,
    StoreError,
    check_key,
    load,
    parse_manifest,
    verify_file,
)


class LocalStore(FeatureStore):
    """Feature sets under `<root>/featuresets/<key>/`; reads straight from the root (no cache).

    `put` stages the whole set, manifest last, in `featuresets/.tmp-<uuid>/` and publishes it
    with one atomic directory rename: the first writer of a key wins and later writers discard
    their copy, so concurrent puts of one key never mix objects from two runs.
    """

    def __init__(self, root: Path | str, mmap: bool = False) -> None:
        self.root = Path(root).absolute()
        self.mmap = mmap

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def _dir(self, key: str) -> Path:
        return self.root / PREFIX / check_key(key)

    def exists(self, key: str) -> bool:
        return (self._dir(key) / MANIFEST).is_file()

    def get(self, key: str) -> FeatureSet:
        return load(self._verified(key), self._dir(key), mmap=self.mmap)

    def check_writable(self) -> None:
        try:
            (self.root / PREFIX).mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.root / PREFIX).close()
        except OSError as exc:
            raise StoreError(
                f"store {self.uri} cannot be written ({exc.strerror}); pass --store (or set "
                "LUSHPO_STORE to) a folder you can write to"
            ) from None

    def verify(self, key: str) -> None:
        self._verified(key)

    def _verified(self, key: str) -> dict:
        """The manifest of `key`, every object checked against it."""
        directory = self._dir(key)
        try:
            data = (directory / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise self.not_found(key) from None
        manifest = parse_manifest(key, data, self.uri)
        for name in manifest["objects"]:
            verify_file(key, name, directory / name, manifest, self.uri)
        return manifest

    def remove(self, key: str) -> None:
        if not self.exists(key):
            raise self.not_found(key)
        # One rename unpublishes the whole set; the debris is deleted afterwards.
        debris = self.root / PREFIX / f".tmp-{uuid.uuid4().hex}"
        os.rename(self._dir(key), debris)
        shutil.rmtree(debris, ignore_errors=True)

    def list(self) -> list[dict]:
        base = self.root / PREFIX
        if not base.is_dir():
            return []
        found = []
        for directory in sorted(base.iterdir()):
            if directory.name.startswith(".") or not (directory / MANIFEST).is_file():
                continue
            found.append(
                parse_manifest(directory.name, (directory / MANIFEST).read_bytes(), self.uri)
            )
        return found

    def _begin(self, key: str) -> str:
        staging = self.root / PREFIX / f".tmp-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        return str(staging)

    def _write_object(self, txn: str, name: str, data: bytes) -> None:
        with open(Path(txn) / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _publish(self, txn: str, key: str) -> None:
        final = self._dir(key)
        try:
            os.rename(txn, final)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if self.exists(key):  # another writer published the same key first
            shutil.rmtree(txn, ignore_errors=True)
            return
        # A directory without a manifest is debris of a foreign writer: move it aside, retry once.
        debris = final.with_name(f".tmp-{uuid.uuid4().hex}")
        os.rename(final, debris)
        os.rename(txn, final)
        shutil.rmtree(debris, ignore_errors=True)

    def _abort(self, txn: str) -> None:
        shutil.rmtree(txn, ignore_errors=True)

"""Feature set types, the `FeatureStore` contract, its errors and the on-store encoding.

A feature set lives under `featuresets/<key>/` of a store root as `features.npy` (float32
`[clips, N, D]`), `index.json` (`{"clip_ids", "labels"}`) and, written last, `manifest.json`
(`{"key", "spec", "shape", "objects": {name: {"sha256", "size"}}, "meta"}`). The manifest is the
commit point: a set without one does not exist, and its digests let every reader verify bytes.
"""

from __future__ import annotations

import builtins  # the stores' `list` method shadows the type in their class bodies
import dataclasses
import hashlib
import io
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.files import sha256_file

PREFIX = "featuresets"
MANIFEST = "manifest.json"
OBJECTS = ("features.npy", "index.json")  # written in this order, then MANIFEST
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9_.+-]*$")


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
        """Human-readable prefix plus content hash, e.g. "xception-f20-even-3f2a9c1d0b7e".

        The hash is sha256 over the canonical JSON (sorted keys, no spaces) of every field, so
        two specs share a key exactly when they would produce the same bytes.
        """
        canonical = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
        return f"{self.backbone}-f{self.frames}-{self.sampling}-{digest}"


@dataclass(frozen=True)
class FeatureSet:
    spec: FeatureSetSpec
    features: np.ndarray  # float32 [clips, frames, dim]
    clip_ids: tuple[str, ...]
    labels: np.ndarray  # int64 [clips], indices into pipeline.manifest.LABELS
    meta: dict  # manifest JSON extras: library versions, created_at, skipped clips, ...


class StoreError(Exception):
    """Base class of every feature store error."""


class CorruptObjectError(StoreError):
    """An object's bytes do not match the sha256 its manifest records."""

    def __init__(self, key: str, name: str, expected: str, got: str, where: str = "") -> None:
        self.key, self.name, self.expected, self.got = key, name, expected, got
        place = f" in {where}" if where else ""
        super().__init__(
            f"feature set {key!r}{place}: object {name!r} is corrupt: "
            f"expected sha256 {expected}, got {got}"
        )
        self._args = (key, name, expected, got, where)

    def __reduce__(self):  # Ray ships errors between processes by pickling them
        return (type(self), self._args)


class FeatureSetNotFoundError(StoreError, KeyError):
    """No manifest for this key; the message lists what the store holds for the same backbone."""

    def __init__(self, key: str, uri: str, same_backbone: list[str]) -> None:
        self.key, self.uri, self.same_backbone = key, uri, same_backbone
        held = ", ".join(same_backbone) if same_backbone else "none"
        # A key, or the `<backbone>-f<N>-<sampling>` a study looked for: say what makes it.
        wanted = re.fullmatch(r"(.+)-f(\d+)-([a-z]+)(?:-[0-9a-f]{12})?", key)
        backbone = wanted[1] if wanted else "this backbone"
        fix = (
            f"; make it with `lushpo features --backbone {wanted[1]} --frames {wanted[2]} "
            f"--sampling {wanted[3]} --store {uri}`"
            if wanted
            else ""
        )
        super().__init__(
            f"feature set {key!r} not found in store {uri}; "
            f"feature sets it holds for {backbone}: {held}{fix}"
        )

    def __reduce__(self):  # Ray ships errors between processes by pickling them
        return (type(self), (self.key, self.uri, self.same_backbone))

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class StoreUnavailableError(StoreError):
    """The store's endpoint could not be reached within the configured retries and timeouts."""


class BucketNotFoundError(StoreError):
    """The bucket named in an s3:// store URI does not exist."""


def split_key(key: str) -> tuple[str, int, str, str] | None:
    """`(backbone, frames, sampling, digest)` of a key made by `FeatureSetSpec.key`, else None."""
    match = re.fullmatch(r"(.+)-f(\d+)-([^-]+)-([0-9a-f]{12})", key)
    if match is None:
        return None
    return match[1], int(match[2]), match[3], match[4]


def check_key(key: str) -> str:
    """Keys become paths and object names: refuse anything that could escape `featuresets/`."""
    if not isinstance(key, str) or not _SAFE_KEY.fullmatch(key) or ".." in key:
        raise ValueError(f"invalid feature set key {key!r}: use FeatureSetSpec.key()")
    return key


def encode(fs: FeatureSet) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """Objects in write order and the manifest that commits them; validates the set's shape."""
    features, labels = fs.features, np.asarray(fs.labels)
    if features.dtype != np.float32 or features.ndim != 3:
        raise ValueError(
            f"FeatureSet.features must be float32 [clips, frames, dim], "
            f"got {features.dtype} with shape {features.shape}"
        )
    if not (features.shape[0] == len(fs.clip_ids) == len(labels)):
        raise ValueError(
            f"FeatureSet has {features.shape[0]} feature rows, {len(fs.clip_ids)} clip_ids and "
            f"{len(labels)} labels; they must be equal"
        )
    if features.shape[1] != fs.spec.frames:
        raise ValueError(f"features have {features.shape[1]} frames, spec says {fs.spec.frames}")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(features), allow_pickle=False)
    index = {"clip_ids": list(fs.clip_ids), "labels": [int(x) for x in labels]}
    objects = [("features.npy", buffer.getvalue()), ("index.json", json.dumps(index).encode())]
    manifest = {
        "key": fs.spec.key(),
        "spec": dataclasses.asdict(fs.spec),
        "shape": list(features.shape),
        "objects": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in objects
        },
        "meta": fs.meta,
    }
    return objects, manifest


def parse_manifest(key: str, data: bytes, where: str) -> dict[str, Any]:
    """Decode a manifest and check it belongs to `key` and records every object."""
    try:
        manifest = json.loads(data)
        ok = manifest["key"] == key and set(OBJECTS) <= set(manifest["objects"])
    except (ValueError, KeyError, TypeError) as exc:
        got = f"unreadable ({exc})"
        raise CorruptObjectError(key, MANIFEST, "a JSON manifest", got, where) from exc
    if not ok:
        expected = f"key {key!r} and objects {list(OBJECTS)}"
        raise CorruptObjectError(key, MANIFEST, expected, "another key or objects", where)
    return manifest


def verify_file(key: str, name: str, path: Path, manifest: dict, where: str) -> None:
    expected = manifest["objects"][name]["sha256"]
    got = sha256_file(path)
    if got != expected:
        raise CorruptObjectError(key, name, expected, got, where)


def load(manifest: dict[str, Any], directory: Path, mmap: bool = False) -> FeatureSet:
    """Build a FeatureSet from verified files in `directory`."""
    features = np.load(directory / "features.npy", mmap_mode="r" if mmap else None)
    index = json.loads((directory / "index.json").read_text())
    return FeatureSet(
        spec=FeatureSetSpec(**manifest["spec"]),
        features=features,
        clip_ids=tuple(index["clip_ids"]),
        labels=np.asarray(index["labels"], dtype=np.int64),
        meta=manifest["meta"],
    )


class FeatureStore(ABC):
    """A root holding content-addressed feature sets.

    Contract every backend keeps (one test suite, `tests/pipeline_tests/test_store.py`, runs it
    against each):

    * `put` is atomic: objects are written first, `manifest.json` last; a crash at any point
      leaves either the complete set or no visible set. `put` of a key that exists is a no-op
      returning the key, so repeated extraction does no work.
    * `exists(key)` is true exactly when the manifest is present.
    * `get` verifies the sha256 of every object against the manifest and raises
      `CorruptObjectError` on mismatch, or `FeatureSetNotFoundError` when there is no manifest.
    * `list` returns the manifests of every visible set, sorted by key; `find` filters them.
    * `verify(key)` checks every object's sha256 against the manifest without keeping the set,
      raising as `get` does.
    * `remove(key)` unpublishes the set first (its manifest goes before its objects), so a
      reader sees the whole set or none; removing a missing key raises
      `FeatureSetNotFoundError`.
    * Stores are safe to use from several threads and processes at once.
    """

    @property
    @abstractmethod
    def uri(self) -> str: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    def put(self, fs: FeatureSet) -> str:
        """Write `fs` unless its key exists; return the key. Objects first, manifest last."""
        objects, manifest = encode(fs)
        key = check_key(manifest["key"])
        if self.exists(key):
            return key
        manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
        txn = self._begin(key)
        try:
            for name, data in [*objects, (MANIFEST, manifest_bytes)]:
                self._write_object(txn, name, data)
            self._publish(txn, key)
        except BaseException:
            self._abort(txn)
            raise
        return key

    @abstractmethod
    def get(self, key: str) -> FeatureSet: ...

    @abstractmethod
    def list(self) -> list[dict]: ...

    def check_writable(self) -> None:
        """Raise `StoreError` when a set could not be written, before hours of extraction
        find out. A bucket's permissions show only on a write: remote stores check nothing."""
        return None

    def verify(self, key: str) -> None:
        """Raise `CorruptObjectError` when an object of `key` fails its sha256."""
        self.get(key)

    @abstractmethod
    def remove(self, key: str) -> None: ...

    # Backends implement `put` as a transaction: begin, write each object, publish (or abort).
    @abstractmethod
    def _begin(self, key: str) -> str: ...

    @abstractmethod
    def _write_object(self, txn: str, name: str, data: bytes) -> None: ...

    @abstractmethod
    def _publish(self, txn: str, key: str) -> None: ...

    @abstractmethod
    def _abort(self, txn: str) -> None: ...

    def find(self, backbone: str, frames: int, sampling: str) -> builtins.list[str]:
        """Keys of the sets extracted with this backbone, frame count and sampling."""
        wanted = {"backbone": backbone, "frames": frames, "sampling": sampling}
        return [
            m["key"]
            for m in self.list()
            if all(m["spec"].get(field) == value for field, value in wanted.items())
        ]

    def not_found(self, key: str) -> FeatureSetNotFoundError:
        """The error for a missing `key`, naming what the store holds of that backbone."""
        parts = split_key(key)
        held = [m["key"] for m in self.list() if parts is None or m["spec"]["backbone"] == parts[0]]
        return FeatureSetNotFoundError(key, self.uri, held)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

"""The FeatureStore contract, run against every backend (local disk and a real S3 endpoint)."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import pytest

from pipeline.store import (
    CorruptObjectError,
    FeatureSet,
    FeatureSetNotFoundError,
    FeatureSetSpec,
    FeatureStore,
    LocalStore,
    S3Store,
    open_store,
)


def make_spec(**changes: object) -> FeatureSetSpec:
    spec = FeatureSetSpec("xception", "none", 3, "even", "v1", "d" * 64)
    return dataclasses.replace(spec, **changes)


def make_set(seed: int = 0, clips: int = 5, dim: int = 7, **spec: object) -> FeatureSet:
    rng = np.random.default_rng(seed)
    spec_ = make_spec(**spec)
    return FeatureSet(
        spec=spec_,
        features=rng.standard_normal((clips, spec_.frames, dim)).astype(np.float32),
        clip_ids=tuple(f"Cov-clip+({i}).gif" for i in range(clips)),
        labels=rng.integers(0, 3, clips),
        meta={"created_at": "2026-11-25T00:00:00Z", "skipped": ["Vir-x.mp4"]},
    )


def assert_same(got: FeatureSet, want: FeatureSet) -> None:
    assert got.spec == want.spec
    assert got.features.dtype == np.float32
    assert got.features.tobytes() == want.features.tobytes()  # bit-exact
    assert got.clip_ids == want.clip_ids
    assert got.labels.dtype == np.int64
    np.testing.assert_array_equal(got.labels, want.labels)
    assert got.meta == want.meta


@dataclass
class Backend:
    """A store plus raw access to its objects, bypassing the store (to forge and corrupt)."""

    store: FeatureStore
    write_raw: Callable[[str, str, bytes], None]  # (key, object name, bytes)
    read_raw: Callable[[str, str], bytes]
    leftovers: Callable[[], list[str]]  # temporary objects a failed put left behind


def local_backend(tmp_path: Path) -> Backend:
    store = LocalStore(tmp_path / "store")

    def write_raw(key: str, name: str, data: bytes) -> None:
        path = store.root / "featuresets" / key / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def leftovers() -> list[str]:
        base = store.root / "featuresets"
        return [p.name for p in base.iterdir() if p.name.startswith(".")] if base.exists() else []

    return Backend(
        store,
        write_raw,
        lambda key, name: (store.root / "featuresets" / key / name).read_bytes(),
        leftovers,
    )


def s3_backend(tmp_path: Path, endpoint: object) -> Backend:
    bucket = f"lushpo-{uuid.uuid4().hex[:12]}"  # moto's backend is shared by every test
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    store = open_store(f"s3://{bucket}/runs/a", cache_dir=tmp_path / "cache")

    def name(key: str, obj: str) -> str:
        return f"runs/a/featuresets/{key}/{obj}"

    return Backend(
        store,
        lambda key, obj, data: client.put_object(Bucket=bucket, Key=name(key, obj), Body=data),
        lambda key, obj: client.get_object(Bucket=bucket, Key=name(key, obj))["Body"].read(),
        lambda: [],  # S3 writes final names; orphans are invisible and left (see S3Store)
    )


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return local_backend(tmp_path)
    return s3_backend(tmp_path, request.getfixturevalue("s3_endpoint"))


# -- keys ------------------------------------------------------------------------------------


def test_key_is_readable_prefix_plus_digest_of_every_field() -> None:
    spec = make_spec()
    assert re.fullmatch(r"xception-f3-even-[0-9a-f]{12}", spec.key())
    assert spec.key() == make_spec().key()  # deterministic
    changed = {
        "backbone": "vgg16",
        "weights_sha256": "e" * 64,
        "frames": 20,
        "sampling": "first",
        "preprocessing_version": "v2",
        "dataset_digest": "f" * 64,
    }
    digests = {make_spec(**{field: value}).key()[-12:] for field, value in changed.items()}
    assert len(digests | {spec.key()[-12:]}) == len(changed) + 1


# -- the contract, on every backend ---------------------------------------------------------


def test_put_get_round_trip_is_bit_exact(backend: Backend) -> None:
    fs = make_set()
    key = backend.store.put(fs)
    assert key == fs.spec.key()
    assert_same(backend.store.get(key), fs)
    assert_same(backend.store.get(key), fs)  # second read (S3: from the node cache)


def test_exists_only_after_put(backend: Backend) -> None:
    fs = make_set()
    assert not backend.store.exists(fs.spec.key())
    backend.store.put(fs)
    assert backend.store.exists(fs.spec.key())


def test_put_of_existing_key_writes_nothing(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = make_set()
    key = backend.store.put(fs)

    def refuse(*args: object) -> None:
        raise AssertionError("put of an existing key wrote an object")

    monkeypatch.setattr(backend.store, "_write_object", refuse)
    assert backend.store.put(make_set(seed=1)) == key  # same spec: a no-op, even with new data
    assert_same(backend.store.get(key), fs)


def test_list_and_find(backend: Backend) -> None:
    sets = [make_set(), make_set(frames=4), make_set(sampling="first"), make_set(backbone="vgg16")]
    keys = [backend.store.put(fs) for fs in sets]
    manifests = backend.store.list()
    assert [m["key"] for m in manifests] == sorted(keys)
    first = next(m for m in manifests if m["key"] == keys[0])
    assert first["shape"] == [5, 3, 7]
    assert first["spec"] == dataclasses.asdict(sets[0].spec)
    assert set(first["objects"]) == {"features.npy", "index.json"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", o["sha256"]) for o in first["objects"].values())
    assert first["meta"] == sets[0].meta
    assert backend.store.find("xception", 3, "even") == [keys[0]]
    assert backend.store.find("xception", 4, "even") == [keys[1]]
    assert backend.store.find("resnet152v2", 3, "even") == []


def test_missing_key_names_key_store_and_same_backbone_sets(backend: Backend) -> None:
    held = backend.store.put(make_set())
    other = backend.store.put(make_set(backbone="vgg16"))
    missing = make_spec(frames=20).key()
    with pytest.raises(FeatureSetNotFoundError) as info:
        backend.store.get(missing)
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert missing in message and backend.store.uri in message and held in message
    assert other not in message


def test_set_without_manifest_is_invisible(backend: Backend) -> None:
    fs = make_set()
    key = fs.spec.key()
    backend.write_raw(key, "features.npy", b"\x93NUMPY partial")
    backend.write_raw(key, "index.json", b'{"clip_ids": [], "labels": []}')
    assert not backend.store.exists(key)
    assert backend.store.list() == []
    with pytest.raises(FeatureSetNotFoundError):
        backend.store.get(key)
    assert backend.store.put(fs) == key  # a later put completes the set over the debris
    assert_same(backend.store.get(key), fs)


def test_crash_mid_put_leaves_no_visible_set(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = make_set()
    written: list[str] = []
    real_write = backend.store._write_object

    def crash_on_second(txn: str, name: str, data: bytes) -> None:
        if written:
            raise RuntimeError(f"simulated crash while writing {name}")
        written.append(name)
        real_write(txn, name, data)

    monkeypatch.setattr(backend.store, "_write_object", crash_on_second)
    with pytest.raises(RuntimeError, match=r"simulated crash while writing index\.json"):
        backend.store.put(fs)
    assert written == ["features.npy"]
    assert not backend.store.exists(fs.spec.key())
    assert backend.store.list() == []
    assert backend.leftovers() == []
    monkeypatch.undo()
    backend.store.put(fs)
    assert_same(backend.store.get(fs.spec.key()), fs)


@pytest.mark.parametrize("name", ["features.npy", "index.json"])
def test_corrupt_object_in_store_is_detected(backend: Backend, name: str) -> None:
    key = backend.store.put(make_set())
    good = backend.read_raw(key, name)
    backend.write_raw(key, name, good[:-1] + bytes([good[-1] ^ 0xFF]))
    expected = backend.store.list()[0]["objects"][name]["sha256"]
    with pytest.raises(CorruptObjectError) as info:
        backend.store.get(key)
    error = info.value
    assert (error.key, error.name, error.expected) == (key, name, expected)
    assert re.fullmatch(r"[0-9a-f]{64}", error.got) and error.got != expected
    assert key in str(error) and name in str(error) and expected in str(error)


def test_verify_names_a_truncated_object_and_remove_makes_room_for_a_rebuild(
    backend: Backend,
) -> None:
    fs = make_set()
    key = backend.store.put(fs)
    backend.store.verify(key)  # sound: no error
    other = backend.store.put(make_set(frames=4))
    backend.write_raw(key, "features.npy", backend.read_raw(key, "features.npy")[:-100])
    with pytest.raises(CorruptObjectError, match=r"object 'features.npy' is corrupt"):
        backend.store.verify(key)
    backend.store.remove(key)
    assert not backend.store.exists(key) and [m["key"] for m in backend.store.list()] == [other]
    with pytest.raises(FeatureSetNotFoundError):
        backend.store.remove(key)
    assert backend.store.put(fs) == key  # no longer a no-op: the set is written anew
    assert_same(backend.store.get(key), fs)
    assert backend.leftovers() == []


def test_put_validates_the_feature_set(backend: Backend) -> None:
    fs = make_set()
    with pytest.raises(ValueError, match=r"float32 .*float64"):
        backend.store.put(dataclasses.replace(fs, features=fs.features.astype(np.float64)))
    with pytest.raises(ValueError, match=r"5 feature rows, 4 clip_ids"):
        backend.store.put(dataclasses.replace(fs, clip_ids=fs.clip_ids[:4]))
    with pytest.raises(ValueError, match=r"invalid feature set key '\.\./x'"):
        backend.store.get("../x")


def test_manifest_is_written_last_with_the_contract_fields(backend: Backend) -> None:
    fs = make_set()
    written: list[str] = []
    real_write = backend.store._write_object

    def record(txn: str, name: str, data: bytes) -> None:
        written.append(name)
        real_write(txn, name, data)

    backend.store._write_object = record  # type: ignore[method-assign]
    key = backend.store.put(fs)
    assert written == ["features.npy", "index.json", "manifest.json"]
    manifest = json.loads(backend.read_raw(key, "manifest.json"))
    assert set(manifest) == {"key", "spec", "shape", "objects", "meta"}
    index = json.loads(backend.read_raw(key, "index.json"))
    assert index == {"clip_ids": list(fs.clip_ids), "labels": fs.labels.tolist()}


# -- open_store -------------------------------------------------------------------------------


def test_open_store_picks_the_backend_from_the_scheme(tmp_path: Path) -> None:
    local = open_store(tmp_path.as_uri())
    assert isinstance(local, LocalStore) and local.root == tmp_path
    assert local.uri == tmp_path.as_uri()
    s3 = open_store("s3://bucket/some/prefix/", cache_dir=tmp_path)
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.uri) == ("bucket", "some/prefix", "s3://bucket/some/prefix")
    assert s3.cache.root == tmp_path


def test_open_store_takes_plain_paths_as_local(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert open_store("relative/dir").uri == (tmp_path / "relative/dir").as_uri()
    assert open_store(str(tmp_path)).uri == tmp_path.as_uri()


@pytest.mark.parametrize("uri", ["gs://bucket/x", "file://host/x", "s3://"])
def test_open_store_rejects_other_uris(uri: str) -> None:
    with pytest.raises(ValueError) as info:
        open_store(uri)
    assert repr(uri) in str(info.value)
    assert "file://" in str(info.value) and "s3://" in str(info.value)


def test_local_concurrent_put_of_one_key_first_writer_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    first = make_set(seed=0)
    key = store.put(first)
    answers = iter([False])  # the second writer checked before the first published
    monkeypatch.setattr(store, "exists", lambda key: next(answers, True))
    assert store.put(make_set(seed=1)) == key
    monkeypatch.undo()
    assert_same(store.get(key), first)
    assert sorted(p.name for p in (tmp_path / "featuresets").iterdir()) == [key]


def test_store_errors_survive_pickling() -> None:
    """Ray ships a trial's exception to the driver by pickling it."""
    import pickle

    from pipeline.store import CorruptObjectError, FeatureSetNotFoundError

    for error in (
        CorruptObjectError("xception-f20-even-0123456789ab", "features.npy", "aa", "bb", "s3://b"),
        FeatureSetNotFoundError("xception-f20-even-0123456789ab", "s3://b/p", ["other"]),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)

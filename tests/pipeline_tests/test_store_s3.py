"""S3Store against a real HTTP endpoint: node cache, concurrent readers, faults and outages."""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle
import re
import threading
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest

from pipeline.store import (
    BucketNotFoundError,
    S3Store,
    StoreUnavailableError,
    open_store,
)
from tests.pipeline_tests.store_reader import read_after_barrier
from tests.pipeline_tests.test_store import assert_same, make_set
from tests.support.s3 import S3Endpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(s3_endpoint: S3Endpoint) -> str:
    name = f"lushpo-{uuid.uuid4().hex[:12]}"  # moto's backend is shared by every test
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture
def stored(bucket: str, tmp_path: Path) -> tuple[str, str, np.ndarray]:
    """(store URI, key, features) of one feature set put through a writer with its own cache."""
    fs = make_set(clips=6, dim=64)
    uri = f"s3://{bucket}/prefix"
    return uri, open_store(uri, cache_dir=tmp_path / "writer").put(fs), fs.features


def test_four_processes_on_one_node_download_once(
    s3_endpoint: S3Endpoint, stored: tuple, tmp_path: Path
) -> None:
    uri, key, features = stored
    s3_endpoint.slow("GET", f"{key}/features.npy", seconds=0.5)  # widen the race window
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    cache = str(tmp_path / "node-cache")
    procs = [
        ctx.Process(target=read_after_barrier, args=(uri, key, cache, barrier, results))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    digests = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert digests == [hashlib.sha256(features.tobytes()).hexdigest()] * 4
    assert s3_endpoint.count("GET", f"{key}/features.npy") == 1
    assert s3_endpoint.count("GET", f"{key}/index.json") == 1


def test_four_threads_on_one_node_download_once(
    s3_endpoint: S3Endpoint, stored: tuple, tmp_path: Path
) -> None:
    uri, key, features = stored
    s3_endpoint.slow("GET", f"{key}/features.npy", seconds=0.5)
    store = open_store(uri, cache_dir=tmp_path / "node-cache")
    barrier, digests = threading.Barrier(4), []

    def read() -> None:
        barrier.wait(timeout=30)
        digests.append(hashlib.sha256(store.get(key).features.tobytes()).hexdigest())

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert digests == [hashlib.sha256(features.tobytes()).hexdigest()] * 4
    assert s3_endpoint.count("GET", f"{key}/features.npy") == 1


def test_cache_layout_and_corrupted_cached_file_is_fetched_again(
    s3_endpoint: S3Endpoint, stored: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, key, features = stored
    store = open_store(uri, cache_dir=tmp_path / "cache")
    store.get(key)
    cached = tmp_path / "cache" / "featuresets" / key
    assert sorted(p.name for p in cached.iterdir()) == [
        "features.npy",
        "index.json",
        "manifest.json",
    ]
    store.get(key)
    assert s3_endpoint.count("GET", f"{key}/features.npy") == 1  # second read: cache only

    data = bytearray((cached / "features.npy").read_bytes())
    data[-1] ^= 0xFF
    (cached / "features.npy").write_bytes(bytes(data))
    got = store.get(key)
    assert got.features.tobytes() == features.tobytes()
    assert s3_endpoint.count("GET", f"{key}/features.npy") == 2
    assert s3_endpoint.count("GET", f"{key}/index.json") == 1  # intact objects are kept
    assert "is corrupt" in caplog.text and "features.npy" in caplog.text


def test_warm_cache_reads_without_the_endpoint(
    s3_endpoint: S3Endpoint, stored: tuple, tmp_path: Path
) -> None:
    uri, key, features = stored
    open_store(uri, cache_dir=tmp_path / "cache").get(key)
    s3_endpoint.stop()
    got = open_store(uri, cache_dir=tmp_path / "cache").get(key)
    assert got.features.tobytes() == features.tobytes()


def test_transient_503s_are_retried(s3_endpoint: S3Endpoint, bucket: str, tmp_path: Path) -> None:
    fs = make_set()
    key = fs.spec.key()
    store = open_store(f"s3://{bucket}", cache_dir=tmp_path / "cache")
    s3_endpoint.fail("PUT", f"{key}/features.npy", times=2, status=503)
    assert store.put(fs) == key
    assert s3_endpoint.count("PUT", f"{key}/features.npy") == 3
    s3_endpoint.fail("GET", f"{key}/features.npy", times=2, status=503)
    s3_endpoint.fail("GET", f"{key}/index.json", times=1, status=500)
    assert_same(store.get(key), fs)
    assert s3_endpoint.count("GET", f"{key}/features.npy") == 3


def test_endpoint_that_keeps_failing_ends_with_a_clear_error(
    s3_endpoint: S3Endpoint, stored: tuple, tmp_path: Path
) -> None:
    uri, key, _ = stored
    store = S3Store(uri.split("/")[2], "prefix", tmp_path / "cache", outage_s=2)
    s3_endpoint.fail("GET", f"{key}/features.npy", times=1000, status=503)
    with pytest.raises(StoreUnavailableError) as info:
        store.get(key)
    assert s3_endpoint.url in str(info.value) and uri.split("/")[2] in str(info.value)
    assert "features.npy" in str(info.value)
    assert not (tmp_path / "cache" / "featuresets" / key / "features.npy").exists()


def test_stopped_endpoint_fails_in_bounded_time_then_recovers(
    s3_endpoint: S3Endpoint, stored: tuple, bucket: str, tmp_path: Path
) -> None:
    uri, key, features = stored
    s3_endpoint.stop()
    store = open_store(uri, cache_dir=tmp_path / "cache")  # defaults: the bound users get
    with pytest.raises(StoreUnavailableError) as info:
        store.get(key)
    assert "still failing after 10 s of retries" in str(info.value)  # the default bound applied
    assert s3_endpoint.url in str(info.value) and repr(bucket) in str(info.value)
    s3_endpoint.start()  # same port, same buckets
    assert store.get(key).features.tobytes() == features.tobytes()


def test_missing_bucket_is_named(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    store = open_store("s3://lushpo-no-such-bucket/x", cache_dir=tmp_path)
    for call in (lambda: store.exists("xception-f3-even-000000000000"), store.list):
        with pytest.raises(BucketNotFoundError, match=r"'lushpo-no-such-bucket'.*does not exist"):
            call()


def test_objects_land_under_the_prefix(s3_endpoint: S3Endpoint, stored: tuple) -> None:
    uri, key, _ = stored
    bucket = uri.split("/")[2]
    names = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(names) == [
        f"prefix/featuresets/{key}/{name}"
        for name in ("features.npy", "index.json", "manifest.json")
    ]


def test_store_pickles_without_its_client(stored: tuple, tmp_path: Path) -> None:
    uri, key, features = stored
    store = open_store(uri, cache_dir=tmp_path / "cache")
    store.exists(key)  # creates the client
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get(key).features.tobytes() == features.tobytes()


def test_missing_key_leaves_nothing_in_the_cache(stored: tuple, tmp_path: Path) -> None:
    uri, key, _ = stored
    missing = key[:-12] + "0" * 12
    with pytest.raises(KeyError, match=re.escape(key)):  # names what the store does hold
        open_store(uri, cache_dir=tmp_path / "cache").get(missing)
    assert not (tmp_path / "cache" / "featuresets" / missing).exists()

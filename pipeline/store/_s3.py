"""`S3Store`: a feature store in an S3-compatible bucket (`s3://bucket/prefix`) via boto3.

Endpoint, region and credentials come from boto3's own resolution (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, ... or a profile), so the same URI works on AWS and on MinIO.

Writes go straight to the final object names, manifest last. S3 has no rename, and a
server-side copy from temporary keys would double the traffic for sets of hundreds of MB; the
single `PUT manifest.json` is the commit point instead. Readers ignore sets without a manifest
and verify every object's sha256, so a partial or concurrent write is never read silently.

Faults, in two layers of library retries: botocore's `standard` mode retries each request
(throttling, 5xx, connection errors) a few times with its short exponential backoff; around
that, tenacity keeps retrying connection failures and 5xx answers with longer waits until
`outage_s` has passed, so a restarting MinIO is ridden out. An unreachable endpoint therefore
ends after about `outage_s` plus one call (`max_attempts * connect_timeout`), under 30 s
with the defaults, with `StoreUnavailableError` naming the endpoint and bucket. A GET whose
body stream breaks is re-issued (tenacity). An endpoint that accepts but never answers is
bounded by `max_attempts * read_timeout`.
"""

from __future__ import annotations

import builtins  # the stores' `list` method shadows the type in their class bodies
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    HTTPClientError,
    IncompleteReadError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from tenacity import (
    Retrying,
    retry,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from pipeline.store._base import (
    MANIFEST,
    OBJECTS,
    PREFIX,
    BucketNotFoundError,
    CorruptObjectError,
    FeatureSet,
    FeatureStore,
    StoreUnavailableError,
    check_key,
    load,
    parse_manifest,
    verify_file,
)
from pipeline.store._cache import NodeCache

_MISSING = {"NoSuchKey", "404", "NotFound"}
_UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}
logger = logging.getLogger(__name__)
T = TypeVar("T")


def _is_outage(exc: BaseException) -> bool:
    """Errors that say the endpoint is down or overloaded, not that the request is wrong."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or exc.response.get("Error", {}).get("Code") in _UNAVAILABLE
    return isinstance(exc, BotoConnectionError | ConnectionClosedError)


class S3Store(FeatureStore):
    """Feature sets under `s3://<bucket>/<prefix>/featuresets/<key>/`, read through a node cache.

    `get` downloads a set once per node into `<cache_dir>/featuresets/<key>/` (default
    `~/.cache/lushpo`) under a file lock, and on every read re-verifies the cached files,
    re-fetching any whose sha256 no longer matches the manifest. The boto3 client is created
    lazily and is not pickled, so a store can be shipped to Ray workers.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        cache_dir: Path | str | None = None,
        *,
        max_attempts: int = 4,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        outage_s: float = 10.0,
        mmap: bool = False,
    ) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.cache = NodeCache(cache_dir)
        self.max_attempts, self.outage_s, self.mmap = max_attempts, outage_s, mmap
        self._config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._root = f"{self.prefix}/{PREFIX}/" if self.prefix else f"{PREFIX}/"
        self._client_lock = threading.Lock()
        self._client_obj: Any = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def _client(self) -> Any:
        with self._client_lock:  # boto3 sessions are not thread-safe; clients are
            if self._client_obj is None:
                import boto3  # deferred: ~1 s to import, and file:// users never need it

                self._client_obj = boto3.session.Session().client("s3", config=self._config)
            return self._client_obj

    @property
    def endpoint(self) -> str:
        return self._client.meta.endpoint_url

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client_obj"], state["_client_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _client_lock=threading.Lock())

    def _object(self, key: str, name: str) -> str:
        return f"{self._root}{check_key(key)}/{name}"

    def _call(self, doing: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, retried through outages for `outage_s`; boto errors become store errors
        that name the endpoint and the bucket."""
        retrying = Retrying(
            retry=retry_if_exception(_is_outage),
            stop=stop_after_delay(self.outage_s),
            wait=wait_exponential(multiplier=0.5, max=4),
            before_sleep=lambda state: logger.warning(
                "S3 endpoint %s failing while %s (%s); retrying",
                self.endpoint,
                doing,
                state.outcome.exception() if state.outcome else None,
            ),
            reraise=True,
        )
        try:
            return retrying(fn, *args)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise BucketNotFoundError(
                    f"bucket {self.bucket!r} of store {self.uri} does not exist at S3 endpoint "
                    f"{self.endpoint}; create it or fix the store URI"
                ) from exc
            if _is_outage(exc):
                raise self._unavailable(doing, exc) from exc
            raise
        except (BotoConnectionError, HTTPClientError) as exc:
            raise self._unavailable(doing, exc) from exc

    def _unavailable(self, doing: str, exc: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"S3 endpoint {self.endpoint} unavailable for bucket {self.bucket!r} (store "
            f"{self.uri}) while {doing}, still failing after {self.outage_s:g} s of retries: {exc}"
        )

    @retry(
        retry=retry_if_exception_type((ResponseStreamingError, IncompleteReadError)),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.2, max=2),
        reraise=True,
    )
    def _get_object(self, name: str, dest: Path | None = None) -> bytes | None:
        """One GET; body into `dest` (streamed) or returned. None when the object is missing."""
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=name)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise
        if dest is None:
            return body.read()
        with open(dest, "wb") as f:
            for chunk in body.iter_chunks(1 << 20):
                f.write(chunk)
        return b""

    def _read_manifest(self, key: str) -> bytes | None:
        return self._call(
            f"reading the manifest of {key}", self._get_object, self._object(key, MANIFEST)
        )

    def exists(self, key: str) -> bool:
        return self._read_manifest(key) is not None

    def get(self, key: str) -> FeatureSet:
        def fetch_manifest() -> bytes:
            data = self._read_manifest(key)
            if data is None:
                raise self.not_found(key)
            return data

        def download(name: str, dest: Path) -> None:
            self._download(key, name, dest)

        manifest, directory = self.cache.materialise(key, fetch_manifest, download, self.uri)
        return load(manifest, directory, mmap=self.mmap)

    def verify(self, key: str) -> None:
        """Every object as the bucket holds it now, not the node cache's copy."""
        data = self._read_manifest(key)
        if data is None:
            raise self.not_found(key)
        manifest = parse_manifest(key, data, self.uri)
        with tempfile.TemporaryDirectory(prefix="lushpo-verify-") as tmp:
            for name in manifest["objects"]:
                dest = Path(tmp) / name
                self._download(key, name, dest)
                verify_file(key, name, dest, manifest, self.uri)
                dest.unlink()

    def _download(self, key: str, name: str, dest: Path) -> None:
        found = self._call(
            f"downloading {name} of {key}", self._get_object, self._object(key, name), dest
        )
        if found is None:
            raise CorruptObjectError(key, name, "the object", "no such object", self.uri)

    def remove(self, key: str) -> None:
        if not self.exists(key):
            raise self.not_found(key)
        for name in (MANIFEST, *OBJECTS):  # the manifest first: the set is unpublished at once
            self._call(f"deleting {name} of {key}", self._delete_object, self._object(key, name))
        shutil.rmtree(self.cache.dir(key), ignore_errors=True)

    def _delete_object(self, name: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=name)

    def list(self) -> list[dict]:
        keys = [
            key
            for name in self._call("listing feature sets", self._list_names)
            for key, _, leaf in [name[len(self._root) :].partition("/")]
            if leaf == MANIFEST and not key.startswith(".")
        ]
        manifests = []
        for key in sorted(keys):
            data = self._read_manifest(key)
            if data is not None:
                manifests.append(parse_manifest(key, data, self.uri))
        return manifests

    def _list_names(self) -> builtins.list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self._root)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def _begin(self, key: str) -> str:
        return key

    def _write_object(self, txn: str, name: str, data: bytes) -> None:
        self._call(f"uploading {name} of {txn}", self._put_object, self._object(txn, name), data)

    def _put_object(self, name: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=name, Body=data)

    def _publish(self, txn: str, key: str) -> None:
        """Nothing to do: the manifest, written last by `put`, is the commit."""

    def _abort(self, txn: str) -> None:
        """Leave the orphans: without a manifest they are invisible, and a concurrent writer of
        the same key may be writing the same object names."""

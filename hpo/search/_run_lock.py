"""One writer per run folder (and per export folder).

`tune`, `--resume`, `run` (through them) and `export` hold a lock named after the folder while
they write it. A second writer is refused with one line naming the holder (host, pid, verb,
since when). A lock whose holder is gone is taken over, and the log says so.

The lock lives beside the folder, never in it (``<parent>/.<name>.lock``), so `--overwrite`
deleting the folder leaves it in place.

* A local folder: ``flock`` on the lock file, which the kernel releases when the holder's process
  ends, however it ends; the file's text names the holder. `filelock` would give the flock but
  not a holder to name in the refusal, so the few lines are ours.
* An ``s3://`` folder: a lease object written with S3's conditional writes (``If-None-Match: *``
  to take a free lock, ``If-Match: <etag>`` to renew ours or to take over an expired one), so two
  drivers on different machines cannot both win. The holder renews it every `LEASE_S` / 3
  seconds. A second writer that sees it renewed is refused; a holder that stopped renewing for
  `LEASE_S`, or whose process on this host has ended (a resubmitted RayJob's driver), is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["LEASE_S", "RunLockedError", "lock_path", "locked"]

LEASE_S = 30.0


class RunLockedError(RuntimeError):
    """Another live process writes the folder."""


def lock_path(folder: str) -> str:
    """Where the lock of `folder` (a path or s3:// URI) lives: beside it."""
    parent, _, name = folder.rstrip("/").rpartition("/")
    return f"{parent}/.{name}.lock" if parent else f".{name}.lock"


def _process_start(pid: int) -> str | None:
    """The boot and start time of process `pid` (field 22 of /proc/<pid>/stat), so that a pid
    reused by another process, or the same pid in another container's PID namespace on a host of
    the same name (a restarted pod), is not taken for the holder. None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{stat.rpartition(')')[2].split()[19]}"  # fields from the 3rd, after (comm)


def _holder(verb: str) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process": _process_start(os.getpid()),
        "verb": verb,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _named(holder: dict) -> str:
    return (
        f"`lushpo {holder.get('verb', '?')}` (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {holder.get('since', '?')})"
    )


def _refusal(folder: str, holder: dict, lock: str) -> RunLockedError:
    return RunLockedError(
        f"{folder} is being written by {_named(holder)}; wait for it to end or stop it "
        f"(its lock: {lock})"
    )


@contextlib.contextmanager
def locked(
    folder: str,
    verb: str,
    *,
    endpoint_url: str | None = None,
    log: Callable[[str], None] = print,
) -> Iterator[None]:
    """Hold the lock of `folder` (a local path or s3:// URI) for `verb`'s writes.

    Raises:
        RunLockedError: a live process holds it."""
    if folder.startswith("s3://"):
        with _s3_lease(folder, verb, endpoint_url, log):
            yield
    else:
        with _flock(folder, verb, log):
            yield


@contextlib.contextmanager
def _flock(folder: str, verb: str, log: Callable[[str], None]) -> Iterator[None]:
    path = Path(lock_path(str(Path(folder).absolute())))
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # e.g. PermissionError, naming the folder (hpo.cli says the fix)
            raise OSError(exc.errno, exc.strerror, str(path.parent)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise _refusal(folder, _read_holder(path), str(path)) from None
        # The holder before us may have removed the file between our open and our flock: then
        # we hold a lock on a file nobody else can find, so take the one at the path instead.
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        os.close(fd)
    try:
        left = os.pread(fd, 4096, 0)
        if left.strip():
            with contextlib.suppress(ValueError):
                gone = _named(json.loads(left))
                log(f"took over the lock of {folder} from {gone}, no longer running")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder(verb)).encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # under the lock: the next writer finds no holder
        os.close(fd)
        for folder_made in made:  # no new empty folder after a failed start
            try:
                folder_made.rmdir()
            except OSError:
                break  # not empty: the writer kept something there


def _read_holder(path: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return {}


def _alive_here(holder: dict) -> bool | None:
    """Whether the holder's process lives, when it ran on this host; None when it did not."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = holder.get("process")
    return started is None or _process_start(holder["pid"]) in (None, started)


def _take_lease(client, bucket: str, key: str, body, failed, folder: str, log) -> str:
    """Take the lease object and return its ETag; refuse a live holder.

    A holder is live while it renews: seen renewing (the ETag changed), it is refused at once.
    One that stopped renewing is gone once its lease has run out (at most `LEASE_S`), or at
    once when it ran on this host and its process has ended."""
    from botocore.exceptions import ClientError

    lock, seen, waiting = f"s3://{bucket}/{key}", None, False
    while True:
        try:
            return client.put_object(Bucket=bucket, Key=key, Body=body(), IfNoneMatch="*")["ETag"]
        except ClientError as exc:
            if not failed(exc):
                raise
        try:
            found = client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            continue  # released meanwhile
        other = json.loads(found["Body"].read() or b"{}")
        left = float(other.get("expires", 0)) - time.time()
        alive = _alive_here(other)
        if (seen is not None and found["ETag"] != seen) or alive:
            raise _refusal(folder, other, lock)
        if left > 0 and alive is None:
            if not waiting:
                log(f"{folder} is locked by {_named(other)}; waiting up to {left:.0f} s for "
                    "its lease to be renewed or to run out")  # fmt: skip
                waiting = True
            seen = found["ETag"]
            time.sleep(min(2.0, left))
            continue
        try:  # gone: take it over, unless another driver just did
            etag = client.put_object(Bucket=bucket, Key=key, Body=body(), IfMatch=found["ETag"])
        except ClientError as exc:
            if not failed(exc):
                raise
            raise _refusal(folder, other, lock) from None
        log(f"took over the lock of {folder} from {_named(other)}, no longer running")
        return etag["ETag"]


@contextlib.contextmanager
def _s3_lease(
    folder: str, verb: str, endpoint_url: str | None, log: Callable[[str], None]
) -> Iterator[None]:
    import boto3  # deferred: local runs never need it
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = lock_path(folder)[len("s3://") :].partition("/")
    from botocore.config import Config

    # An unreachable endpoint answers in seconds, not boto3's default minutes of retries.
    config = Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard",
                    "total_max_attempts": 3})  # fmt: skip
    client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
    holder = _holder(verb)

    def body() -> bytes:
        return json.dumps({**holder, "expires": time.time() + LEASE_S}).encode()

    def failed(exc: ClientError) -> bool:
        return exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412")

    try:
        etag = _take_lease(client, bucket, key, body, failed, folder, log)
    except (BotoCoreError, ClientError) as exc:  # unreachable, no bucket, no credentials
        raise OSError(
            f"the lock of {folder} cannot be written at {client.meta.endpoint_url} "
            f"({' '.join(str(exc).split())[:200]}); check the endpoint (storage.endpoint_url or "
            "AWS_ENDPOINT_URL), the bucket and the AWS credentials"
        ) from None
    stop = threading.Event()
    current = [etag]

    def renew() -> None:
        while not stop.wait(LEASE_S / 3):
            try:
                reply = client.put_object(Bucket=bucket, Key=key, Body=body(), IfMatch=current[0])
                current[0] = reply["ETag"]
            except ClientError as exc:
                if failed(exc):
                    log(f"warning: the lock of {folder} was taken over by another writer")
                    return
            except Exception:
                continue

    renewer = threading.Thread(target=renew, name="lushpo-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(Exception):
            if client.head_object(Bucket=bucket, Key=key)["ETag"] == current[0]:
                client.delete_object(Bucket=bucket, Key=key)

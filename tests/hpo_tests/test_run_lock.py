"""hpo.search: one writer per folder, locally (flock, held by another process) and on S3 (a
lease with conditional writes, on moto's real HTTP endpoint); a dead holder is taken over."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
import uuid

import boto3
import pytest

from hpo.search import RunLockedError, lock_path, locked
from hpo.search import _run_lock as run_lock


def _hold(folder: str, ready, release) -> None:
    with locked(folder, "tune", log=lambda _m: None):
        ready.set()
        release.wait(60)


def test_a_second_local_writer_is_refused_naming_the_holder(tmp_path):
    folder = str(tmp_path / "runs" / "tiny")
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(folder, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        assert os.path.exists(lock_path(folder)) and not os.path.exists(folder)
        with pytest.raises(RunLockedError) as refused, locked(folder, "export"):
            pass
        message = str(refused.value)
        assert f"`lushpo tune` (pid {holder.pid} on {socket.gethostname()}" in message
        assert message.startswith(f"{folder} is being written by") and "\n" not in message
    finally:
        release.set()
        holder.join(30)
    lines: list[str] = []
    with locked(folder, "tune", log=lines.append):  # released: free again, nothing taken over
        pass
    assert lines == [] and not os.path.exists(lock_path(folder))


def test_a_local_lock_of_a_killed_holder_is_taken_over(tmp_path):
    folder = str(tmp_path / "tiny")
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(folder, ready, release))
    holder.start()
    assert ready.wait(60)
    holder.kill()  # SIGKILL: the kernel drops its flock, its text stays
    holder.join(30)
    lines: list[str] = []
    with locked(folder, "tune", log=lines.append):
        with open(lock_path(folder)) as text:
            held = json.load(text)
        assert held["pid"] == os.getpid() and held["verb"] == "tune"
    assert len(lines) == 1 and f"pid {holder.pid}" in lines[0] and "no longer running" in lines[0]


def test_an_s3_lease_refuses_a_renewing_holder_and_takes_over_a_dead_one(s3_endpoint, monkeypatch):
    bucket = f"lushpo-lock-{uuid.uuid4().hex[:8]}"  # moto's backend outlives each endpoint
    boto3.client("s3").create_bucket(Bucket=bucket)
    folder = f"s3://{bucket}/studies/tiny"
    monkeypatch.setattr(run_lock, "LEASE_S", 6.0)  # renewed every 2 s
    lines: list[str] = []
    with locked(folder, "tune", log=lines.append):
        key = boto3.client("s3").get_object(Bucket=bucket, Key="studies/.tiny.lock")
        assert json.loads(key["Body"].read())["verb"] == "tune"
        # Ours, so alive here: refused at once. From another host: refused once seen renewed.
        ours = pytest.raises(RunLockedError, match="is being written by `lushpo tune`")
        with ours, locked(folder, "export"):
            pass
        here = socket.gethostname()
        monkeypatch.setattr(socket, "gethostname", lambda: "another-host")
        renewed = pytest.raises(
            RunLockedError, match=rf"\(its lock: s3://{bucket}/studies/\.tiny\.lock"
        )
        with renewed, locked(folder, "export", log=lines.append):
            pass
        # refused, so seen renewed: a holder that stopped would have been taken over
        monkeypatch.setattr(socket, "gethostname", lambda: here)
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=bucket)  # released

    # A holder on another host that stopped renewing (its lease ran out): taken over.
    dead = {"host": "gone-host", "pid": 1, "verb": "tune", "since": "then", "expires": 0}
    boto3.client("s3").put_object(Bucket=bucket, Key="studies/.tiny.lock", Body=json.dumps(dead))
    with locked(folder, "tune", log=lines.append):
        pass
    assert f"took over the lock of {folder} from `lushpo tune` (pid 1 on gone-host" in (lines[-1])

    # A holder named by this host and a live pid that is another process (a pid reused, or a
    # restarted container's PID namespace): gone at once, without waiting for its lease.
    reused = {"host": socket.gethostname(), "pid": os.getpid(), "process": "another-boot:1",
              "verb": "tune", "since": "then", "expires": time.time() + 600}  # fmt: skip
    boto3.client("s3").put_object(Bucket=bucket, Key="studies/.tiny.lock", Body=json.dumps(reused))
    lines = []
    with locked(folder, "tune", log=lines.append):
        pass
    assert not [line for line in lines if "waiting up to" in line], "waited for a gone holder"
    assert "took over the lock" in lines[-1]

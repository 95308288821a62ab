"""A Ray cluster started the way users start one: `ray start --head`, then `ray start --address`,
on loopback, each node with its own CPU count. Token authentication is on unless asked otherwise.

Only this cluster's processes are stopped: every Ray process carries the cluster's own temp dir
in its command line, so teardown signals exactly those (never `ray stop`, which would end every
Ray instance on the machine)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.s3 import free_port

RAY = str(Path(sys.executable).with_name("ray"))


def pids_naming(marker: str) -> list[int]:
    """Processes (not this one) whose command line contains `marker`, e.g. a Ray temp dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def complete_trials(optuna_db: Path) -> int:
    """COMPLETE trials in an Optuna sqlite file (0 before the file or its tables exist)."""
    if not optuna_db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(optuna_db)) as db:
        try:
            rows = db.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()
        except sqlite3.OperationalError:
            return 0
    return rows[0]


def budget_states(optuna_db: Path, study: str | None = None) -> list[str]:
    """The state of each trial of the study's budget, as its newest attempt ended.

    A trial Tune's saved record lacks runs again as a retry (``lushpo_retry_of``, see
    `hpo.search.reconcile`); the budget counts it once, so a killed study may hold more
    COMPLETE rows than its budget while every trial of the budget ended exactly once."""
    import optuna

    url = f"sqlite:///{optuna_db}"
    names = [study] if study else optuna.get_all_study_names(url)
    assert len(names) == 1, f"{optuna_db} holds studies {names}"
    newest = newest_attempts(optuna.load_study(study_name=names[0], storage=url).trials)
    return [newest[n].state.name for n in sorted(newest)]


def newest_attempts(trials: list) -> dict:
    """{number of a trial of the budget: the Optuna trial of its newest attempt}."""
    from hpo.search import RETRY_ATTR

    newest = {t.number: t for t in trials if RETRY_ATTR not in t.user_attrs}
    for trial in trials:  # retries come after what they retry
        first = trial.user_attrs.get(RETRY_ATTR)
        while first is not None and first not in newest:
            first = trials[first].user_attrs.get(RETRY_ATTR)
        if first is not None:
            newest[first] = trial
    return newest


class RayCLICluster:
    def __init__(self, env: dict[str, str], *, token: bool = True, dashboard: bool = False):
        # Short: Ray puts unix sockets under the temp dir (107-byte path limit).
        self.temp_dir = tempfile.mkdtemp(prefix="lr", dir="/tmp")
        self.token = secrets.token_hex(16) if token else None
        self.port = free_port()
        self.dashboard_port = free_port() if dashboard else None
        self.dashboard = dashboard
        self.env = dict(env)
        self.env.pop("RAY_ADDRESS", None)
        if self.token:
            self.env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        else:
            self.env |= {"RAY_AUTH_MODE": "disabled"}
            self.env.pop("RAY_AUTH_TOKEN", None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ray(self, *args: str) -> None:
        result = subprocess.run(
            [RAY, *args], env=self.env, capture_output=True, text=True, timeout=180, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self, worker_cpus: tuple[int, ...] = (1,), head_cpus: int = 1) -> RayCLICluster:
        common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats",
                  "--object-store-memory=300000000"]  # fmt: skip
        head = ["start", "--head", f"--port={self.port}", f"--num-cpus={head_cpus}",
                f"--temp-dir={self.temp_dir}", *common]  # fmt: skip
        if self.dashboard:
            head += ["--include-dashboard=true", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}"]  # fmt: skip
        else:
            head += ["--include-dashboard=false"]
        self._ray(*head)
        for cpus in worker_cpus:
            self._ray("start", f"--address={self.address}", f"--num-cpus={cpus}", *common)
        self.wait_for_nodes(1 + len(worker_cpus))
        return self

    def wait_for_nodes(self, count: int, timeout: float = 60) -> None:
        code = (
            "import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                [sys.executable, "-c", code, self.address],
                env=self.env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if result.returncode == 0 and result.stdout.strip().endswith(str(count)):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster has not {count} nodes: {result.stdout}{result.stderr}")
            time.sleep(1)

    def pids(self) -> list[int]:
        """Processes whose command line names this cluster's temp dir."""
        return pids_naming(self.temp_dir)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        if not self.pids():
            shutil.rmtree(self.temp_dir, ignore_errors=True)

"""`lushpo tune` as a real subprocess driver that tests can watch, interrupt and kill.

The driver runs in its own session (process group), so a test can SIGKILL the driver at a chosen
moment and then every Ray process it started (raylet, GCS, trial workers) with one `killpg` —
what a node or pod loss does — without touching Ray instances that other tests run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import yaml

__all__ = ["Driver", "write_config"]

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, data: Mapping) -> Path:
    """A study YAML for the driver."""
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path


class Driver:
    """One `lushpo tune ARGS` process (or `python -m MODULE ARGS`); its stdout and stderr lines
    are collected as they come."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        module: str | None = None,
    ) -> None:
        self.args = ["-m", "hpo.cli", "tune", *args] if module is None else ["-m", module, *args]
        # A Cluster fixture elsewhere in the session may have left RAY_ADDRESS set: the driver
        # starts its own Ray unless `env` names one.
        environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        environ.update(env or {})
        environ.update(PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3", RAY_DEDUP_LOGS="0")
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, *self.args],
            cwd=REPO,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float, what: str) -> None:
        """Block until `predicate(lines)` holds; fail naming `what` and the output otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"driver never reached: {what} (rc {self.proc.poll()}); output:\n"
                        + "\n".join(self.lines[-60:])
                    )
                self._cond.wait(min(left, 0.2))

    def poll_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `condition` (e.g. a file in the run dir) every 20 ms while the driver runs."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(
                    f"driver never reached: {what} (rc {self.proc.poll()}); output:\n"
                    + self.output[-6000:]
                )
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the driver, then everything else in its process group (its Ray instance)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.reap()

    def reap(self) -> None:
        """Kill what is left of the driver's process group (Ray processes it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._reader.join(timeout=10)

    def wait(self, timeout: float) -> int:
        """The exit status, after which the driver's leftover processes are killed."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"driver ran past {timeout} s; output:\n{self.output[-6000:]}"
            ) from None
        self.reap()
        return rc

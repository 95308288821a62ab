"""`lushpo run`, the verb `make run` calls, on a folder of a user's own clips (stratified split,
no paper files, so no fetch) with a tiny study: a run killed (SIGKILL) during its study finishes
when started again, with exactly the configured number of trials; a further run extracts
nothing, finds the study finished and replaces the export."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from hpo.results import MANIFEST
from tests.support.clips import write_clip
from tests.support.ray_cli import budget_states, complete_trials, pids_naming
from tests.support.read_only import read_only

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LUSHPO = str(Path(sys.executable).with_name("lushpo"))
TRIALS = 4


@pytest.fixture
def ray_tmp():
    """The Ray temp dir of this test's runs; short, since Ray puts unix sockets under it."""
    path = Path(tempfile.mkdtemp(prefix="lr", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """Twelve 12-frame clips, four per class, and nothing else."""
    root = tmp_path / "data"
    names = [f"{p}-own-{i}.{ext}" for p in ("Cov", "Pneu", "Reg")
             for i, ext in enumerate(("mp4", "avi", "gif", "mp4"))]  # fmt: skip
    for k, name in enumerate(names):
        write_clip(root / "pocus" / "convex" / name, 12, first_index=4 * k)
    return root


@pytest.fixture
def env(tmp_path, data_dir, ray_tmp) -> dict[str, str]:
    """A user's shell: the data dir, a home and a Ray temp dir of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LUSHPO_"))}
    env |= {
        "HOME": str(tmp_path / "home"),
        "RAY_TMPDIR": str(ray_tmp),
        "LUSHPO_DATA_DIR": str(data_dir),
        "LUSHPO_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
    }
    (tmp_path / "home").mkdir()
    return env


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "feature_set": {"backbone": "mobilenetv2", "frames": 5, "sampling": "even"},
                "split": {"kind": "stratified", "k": 3},
                "space": {
                    "lstm_units": [8, 16],
                    "dense_layers": 1,
                    "dense_units_1": [8],
                    "batch_size": [16],
                },
                "budget": {"trials": TRIALS, "max_concurrent": 1, "max_epochs": 3, "patience": 2},
                "resources": {"cpu": 1, "intra_op_threads": 1},
                "num_cpus": 2,
            }
        )
    )
    return path


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    return [
        LUSHPO, "run", "--config", str(_config(tmp_path)), "--weights", "none",
        "--store", (tmp_path / "store").as_uri(), "--storage-path", str(tmp_path / "runs"),
        "--out", str(tmp_path / "out"), *extra,
    ]  # fmt: skip


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_run_killed_mid_study_then_rerun_twice(env, tmp_path, ray_tmp):
    out = tmp_path / "out"
    optuna_db = tmp_path / "runs" / "tiny" / "optuna.db"
    # Killed (SIGKILL, with its Ray instance) once the study's first trial has finished.
    killed = subprocess.Popen(_argv(tmp_path), env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while complete_trials(optuna_db) < 1:
            assert killed.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no trial finished within 600 s"
            time.sleep(0.5)
        assert complete_trials(optuna_db) < TRIALS
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(30)
    finally:
        for pid in pids_naming(str(ray_tmp)):  # the killed run's Ray instance
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # Run again as first typed: extraction is found in the store, the study resumes and ends
    # with exactly its budget, then export and evaluate.
    second = _run(_argv(tmp_path), env)
    assert "found in store" in second.stdout and "stored " not in second.stdout
    assert "lushpo run [1/4] features" in second.stderr, "a data step ran without paper files"
    assert "lushpo run [4/4] evaluate" in second.stderr
    states = budget_states(optuna_db)
    assert states == ["COMPLETE"] * TRIALS, f"the resumed study ran a different budget: {states}"
    # Quiet by default: Ray's and Optuna's banners stay off the console (the progress view and
    # lushpo's own lines remain).
    banners = re.compile(
        r"Started a local Ray instance|Token authentication|Configuration for experiment|"
        r"tensorboard|Tuner.restore|A new study created|View detailed results"
    )
    assert not banners.findall(second.stdout + second.stderr), second.stderr[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    assert (card["backbone"], card["frames"]) == ("mobilenetv2", 5)
    assert (out / "report.md").is_file()
    stale = out / "fold-9.h5"  # as if an earlier export had more folds
    stale.write_text("from an earlier export")
    listed = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**listed, "files": [*listed["files"], stale.name]}))
    notes = out / "notes.txt"  # the user's own file: an export never deletes it
    notes.write_text("mine")

    # Once more: nothing extracted, the finished study reused, the export replaced.
    third = _run(_argv(tmp_path), env)
    assert "found in store" in third.stdout and "stored " not in third.stdout
    assert "already finished" in third.stdout, third.stdout[-3000:]
    assert budget_states(optuna_db) == states
    assert not stale.exists(), "the export was not replaced"
    assert notes.read_text() == "mine"
    assert json.loads((out / "model_card.json").read_text())["trial_id"] == card["trial_id"]
    assert not pids_naming(str(ray_tmp)), "a run left Ray processes behind"

    # Bad places to write, through the real verbs: one line naming the folder or what to pass,
    # exit 1 or 2, no traceback, nothing half-written.
    run, store = str(tmp_path / "runs" / "tiny"), (tmp_path / "store").as_uri()
    report = (out / "report.md").read_text()
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked), read_only(out):
        cases = {
            "export into an existing export": (["export", run, "--out", str(out)], 2,
                                               "--overwrite"),
            "export --out in a read-only folder": (
                ["export", run, "--out", str(locked / "x")], 1, f"permission denied: {locked}"
            ),
            "evaluate a read-only export": (["evaluate", str(out), "--no-paper"], 1,
                                            f"permission denied: {out}"),
        }  # fmt: skip
        for case, (args, code, named) in cases.items():
            done = subprocess.run([LUSHPO, *args, "--store", store], env=env, capture_output=True,
                                  text=True, timeout=600, check=False)  # fmt: skip
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            assert done.returncode == code and len(lines) == 1, (case, done.stderr[-3000:])
            assert named in lines[0] and "Traceback" not in done.stderr, (case, lines[0])
    assert not any(locked.iterdir()), "a failed export left a folder behind"
    assert (out / "report.md").read_text() == report

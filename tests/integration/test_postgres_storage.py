"""Issue 22: a study on a real PostgreSQL server (the storage the k8s overlays use) leaves its
password nowhere — not in the run storage (Tune's pickles included), not in a printed line —
and resumes after the password is changed.

`lushpo tune --optuna-storage postgresql://lushpo:<secret>@127.0.0.1:PORT/optuna` runs as a
real driver; a Ctrl-C stops it after its first trial (it prints the resume command), the
password is rotated, and ``--resume`` with the new URL finishes the study."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import optuna
import pytest

from hpo.search import TUNE_ID_ATTR, connectable
from tests.conftest import REQUIRE_SHARED
from tests.integration.driver import Driver, write_config
from tests.integration.test_resume import done_trials
from tests.support.featuresets import put_synthetic
from tests.support.postgres import PostgresServer, postgres_bin
from tests.support.studies import checkpointed_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRST, ROTATED = "Pg-first-9c41e", "Pg-rotated-77d0a"


@pytest.fixture
def postgres():
    if postgres_bin() is None:
        message = "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"
        if REQUIRE_SHARED:
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer("lushpo", FIRST, "optuna").start()
    yield server
    server.stop()


def _files_holding(root: Path, secrets: tuple[str, ...]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return found


def test_no_password_in_any_record_and_resume_after_it_is_rotated(tmp_path, postgres):
    store_uri, _key, _ = put_synthetic(tmp_path / "store", clips=12, frames=3, dim=4)
    study = checkpointed_study(tmp_path, store_uri, "pg")
    study["budget"] = {**study["budget"], "trials": 2, "max_epochs": 1, "patience": 1}
    config = write_config(tmp_path / "pg.yaml", study)
    env = {"LUSHPO_OPTUNA_PASSWORD": "", "LUSHPO_OPTUNA_STORAGE": ""}

    first = Driver(["--config", str(config), "--optuna-storage", postgres.url()], env=env)
    try:
        first.wait_for(lambda lines: len(done_trials(lines)) >= 1, 300, "a trial done")
        os.killpg(first.proc.pid, signal.SIGINT)  # Ctrl-C: save, print the resume command
        assert first.wait(180) == 130, first.output
    finally:
        first.reap()
    assert "resume with: lushpo tune" in first.output
    assert "postgresql://lushpo:***@127.0.0.1" in first.output  # banner and resume command

    postgres.change_password(ROTATED)
    resumed = Driver(
        ["--config", str(config), "--optuna-storage", postgres.url(), "--resume"], env=env
    )
    assert resumed.wait(400) == 0, resumed.output

    for driver in (first, resumed):
        assert FIRST not in driver.output and ROTATED not in driver.output
    assert not _files_holding(tmp_path / "runs", (FIRST, ROTATED))
    assert list((tmp_path / "runs" / "pg").glob("*.pkl"))  # Tune's pickles were searched
    trials = optuna.load_study(study_name="pg", storage=connectable(postgres.url())).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert len({t.user_attrs[TUNE_ID_ATTR] for t in trials}) == 2

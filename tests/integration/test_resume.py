"""Issue 4: a study whose driver dies resumes to exactly its budget, keeping finished trials.

`lushpo tune` runs as a real subprocess (tests.integration.driver) on its own local Ray instance.
The test SIGKILLs it — and its whole process group, as when a head pod dies — right after a
trial's mid-run checkpoint landed in the run dir (the other kill points: test_kill_anywhere.py,
with a trivial trial). Then `lushpo tune --resume` must end with exactly the budget
of completed trials, the same results for trials finished before the kill, no finished config
trained again, and an Optuna storage with no trial left RUNNING.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
from pathlib import Path

import optuna
import pytest
from ray.tune import ExperimentAnalysis

from hpo.train import HISTORY
from tests.integration.driver import Driver, write_config
from tests.support.featuresets import put_synthetic
from tests.support.studies import CHECKPOINTED_EPOCHS, CHECKPOINTED_TRIALS, checkpointed_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIALS = CHECKPOINTED_TRIALS
EPOCHS = CHECKPOINTED_EPOCHS
DONE = re.compile(r"trial (\S+) done: accuracy=([0-9.]+)")


def study_yaml(tmp_path: Path, store_uri: str, name: str) -> Path:
    return write_config(tmp_path / f"{name}.yaml", checkpointed_study(tmp_path, store_uri, name))


def done_trials(lines: list[str]) -> dict[str, float]:
    return {m[1]: float(m[2]) for line in lines if (m := DONE.search(line))}


def epoch_results(trial_dir: Path) -> list[list[float]]:
    """Every epoch the trial reported, as ``[epoch, val_accuracy]`` (a report carries the epochs
    since the previous one)."""
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    return [epoch for r in rows for epoch in r[HISTORY]]


def check_resumed_study(run_dir: Path, optuna_url: str, name: str, before: dict[str, float]):
    """Exactly TRIALS completed trials; the ones done before the kill unchanged and not
    retrained; distinct configs; the Optuna storage agrees and has nothing RUNNING."""
    analysis = ExperimentAnalysis(str(run_dir))
    trials = analysis.trials
    assert len(trials) == TRIALS, [t.trial_id for t in trials]
    assert all(t.status == "TERMINATED" for t in trials), [(t.trial_id, t.status) for t in trials]
    by_id = {t.trial_id: t for t in trials}
    for trial_id, value in before.items():
        assert by_id[trial_id].last_result["accuracy"] == pytest.approx(value, abs=5e-5)
        # trained once: its results carry EPOCHS epochs, none replayed after resume
        assert len(epoch_results(Path(by_id[trial_id].path))) == EPOCHS
    configs = [tuple(sorted(t.config.items())) for t in trials]
    assert len(set(configs)) == TRIALS, configs

    study = optuna.load_study(study_name=name, storage=optuna_url)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states, states
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == TRIALS
    assert sorted(t.params["learning_rate"] for t in complete) == pytest.approx(
        sorted(t.config["learning_rate"] for t in trials)
    )
    assert sorted(t.value for t in complete) == pytest.approx(
        sorted(t.last_result["accuracy"] for t in trials), abs=5e-5
    )


def _mid_run_checkpoint(run_dir: Path) -> bool:
    return any(run_dir.glob("*/checkpoint_*/lockstep.json"))


def test_driver_killed_after_a_mid_run_checkpoint_resumes_to_exactly_the_budget(tmp_path):
    """Killed once a trial's mid-run checkpoint (train_cv's lockstep state) landed: the resumed
    trial continues from it. The other kill points (mid-trial, between trials, between Tune's
    experiment and search saves, …) run with a trivial trial, nine of them, in
    tests/integration/test_kill_anywhere.py; this one needs the real trainable."""
    store_uri, _key, _ = put_synthetic(tmp_path / "store", clips=12, frames=3, dim=4)
    config = study_yaml(tmp_path, store_uri, "killed")
    run_dir = tmp_path / "runs" / "killed"

    driver = Driver(["--config", str(config)])
    try:
        driver.wait_for(lambda lines: len(done_trials(lines)) >= 2, 300, "two trials done")
        driver.poll_until(lambda: _mid_run_checkpoint(run_dir), 120, "a mid-run checkpoint")
        driver.kill()
    finally:
        driver.reap()
    before = done_trials(driver.lines)
    assert before, driver.output

    resumed = Driver(["--config", str(config), "--resume"])
    rc = resumed.wait(400)
    assert rc == 0, resumed.output
    assert "already finished" not in resumed.output
    check_resumed_study(run_dir, f"sqlite:///{run_dir}/optuna.db", "killed", before)


@pytest.mark.parametrize("presses", [1, 2], ids=["once", "twice"])
def test_ctrl_c_saves_state_prints_the_resume_command_and_exits_130(presses, tmp_path):
    """Ctrl-C once stops the study gracefully; an impatient second press stops it at once. Both
    say so in a line with a message (issue 23: a double Ctrl-C printed `lushpo tune: ` and
    nothing else), print the resume command, and the study resumes to its budget."""
    name = f"ctrl-c-{presses}"
    store_uri, _key, _ = put_synthetic(tmp_path / "store", clips=12, frames=3, dim=4)
    config = study_yaml(tmp_path, store_uri, name)
    run_dir = tmp_path / "runs" / name

    driver = Driver(["--config", str(config), "--overwrite"])
    try:
        driver.wait_for(lambda lines: len(done_trials(lines)) >= 1, 300, "a trial done")
        for press in range(presses):
            os.killpg(driver.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
            if press + 1 < presses:  # the second press once the first was taken
                driver.wait_for(lambda lines: any("Ctrl-C again" in x for x in lines), 60, "ack")
        rc = driver.wait(180)
    finally:
        driver.reap()
    assert rc == 130, driver.output
    said = [line for line in driver.output.splitlines() if line.startswith("lushpo tune:")]
    assert said and all(line.removeprefix("lushpo tune:").strip() for line in said), said
    assert "interrupted" in driver.output and "Traceback" not in driver.output
    assert f"resume with: lushpo tune --config {config} --resume" in driver.output

    resumed = Driver(["--config", str(config), "--resume"])
    assert resumed.wait(400) == 0, resumed.output
    check_resumed_study(run_dir, f"sqlite:///{run_dir}/optuna.db", name, {})


def test_resume_command_drops_overwrite_and_adds_resume():
    from hpo.cli._commands.tune import resume_command

    argv = ["/x/lushpo", "tune", "--config", "a b.yaml", "--overwrite", "--trials", "6"]
    assert resume_command(None, argv) == "lushpo tune --config 'a b.yaml' --trials 6 --resume"
    args = argparse.Namespace(
        config="s.yaml", trials=None, name="n", resume=False, overwrite=True, nested=True
    )
    assert (
        resume_command(args, ["pytest"]) == "lushpo tune --config s.yaml --name n --nested --resume"
    )


def test_resume_command_masks_the_optuna_storage_password():
    from hpo.cli._commands.tune import resume_command

    url = "postgresql+psycopg2://lushpo:hunter2@db:5432/optuna"
    shown = "postgresql+psycopg2://lushpo:***@db:5432/optuna"
    for argv in (
        ["lushpo", "tune", "--optuna-storage", url],
        ["lushpo", "run", "--optuna-storage", url],
        ["lushpo", "tune", f"--optuna-storage={url}"],
    ):
        line = resume_command(None, argv)
        assert "hunter2" not in line and shown in line, line
    args = argparse.Namespace(config="s.yaml", optuna_storage=url, resume=False, overwrite=False)
    assert "hunter2" not in resume_command(args, ["pytest"])

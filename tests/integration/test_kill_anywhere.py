"""Issue 22: a study's driver SIGKILLed anywhere resumes to one consistent record.

The driver (tests.integration.trivial_driver) runs `run_study` over a trivial trial, so that
the search, Tune's saves and Optuna's storage are what is tested, not TensorFlow; it kills its
own process group (itself and its Ray instance) at one of nine points, among them between
Tune's experiment-state save and its search save, and during a checkpoint's upload to S3
(moto). After ``--resume``, Optuna's storage must hold:

- exactly the budget of finished trials (retries aside);
- one Optuna trial per Tune trial, retries marked;
- no RUNNING trial;
- every COMPLETE value equal to that trial's final test score.
"""

from __future__ import annotations

import json
import subprocess
import sys

import boto3
import optuna
import pytest
from ray.tune import ExperimentAnalysis

from hpo.results._run_reader import _read_run
from hpo.search import RETRY_ATTR, TUNE_ID_ATTR, experiment_paths, load_config
from hpo.search._prepare import storage_filesystem
from tests.integration.driver import Driver, write_config
from tests.integration.trivial_driver import POINTS
from tests.support.featuresets import put_synthetic
from tests.support.ray_cli import complete_trials, newest_attempts
from tests.support.s3 import S3Endpoint
from tests.support.trivial_trial import EPOCH_ENV, score

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUDGET = 5
SPACE = {
    "lstm_units": [4, 8, 16],
    "dense_layers": 1,
    "dense_units_1": [4, 8],
    "batch_size": [8, 16],
    "learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
}


def _config(tmp_path, store_uri: str, storage: dict) -> dict:
    return {
        "name": "kill",
        "store": store_uri,
        "num_cpus": 2,
        "feature_set": {"backbone": "synthetic", "frames": 3},
        "split": {"kind": "stratified", "k": 2, "seed": 0},
        "space": SPACE,
        "budget": {"trials": BUDGET, "max_concurrent": 2, "max_epochs": 3, "patience": 3,
                   "checkpoint_every": 1, "checkpoint_interval_s": 0, "max_failures": 1},
        "searcher": {"sampler": "tpe", "seed": 5},
        "resources": {"cpu": 1},
        "storage": storage,
        "cache_dir": str(tmp_path / "cache"),
    }  # fmt: skip


def _check_record(optuna_url: str, run: str, fs=None, budget: int = BUDGET) -> None:
    trials = optuna.load_study(study_name="kill", storage=optuna_url).trials
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.RUNNING not in states, states
    firsts = [t for t in trials if RETRY_ATTR not in t.user_attrs]
    assert len([t for t in firsts if t.state.is_finished()]) == budget, states
    assert len(firsts) == budget, [(t.number, t.state, t.user_attrs) for t in trials]
    tune_trials = [  # the run's own experiment and its continuations
        trial
        for path in experiment_paths(fs, run)
        for trial in ExperimentAnalysis(path, storage_filesystem=fs).trials
    ]
    tune_ids = sorted(t.trial_id for t in tune_trials)
    # one Optuna trial per Tune trial; a retry of the same Tune trial shares its id
    assert sorted({t.user_attrs[TUNE_ID_ATTR] for t in trials}) == tune_ids
    assert len({t.user_attrs[TUNE_ID_ATTR] for t in firsts}) == budget
    by_tune = {t.trial_id: t for t in tune_trials}
    retried = {t.user_attrs[RETRY_ATTR]: t for t in trials if RETRY_ATTR in t.user_attrs}
    for trial in trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(score(trial.params))
            tune = by_tune[trial.user_attrs[TUNE_ID_ATTR]]
            if tune.last_result.get("final") is not True:
                # Tune's saved record could not restore it (a checkpoint Tune had deleted):
                # it ran again, as a marked retry that completed with the same score
                retry = retried[trial.number]
                assert retry.state == optuna.trial.TrialState.COMPLETE, retry
                assert retry.value == trial.value and retry.params == trial.params
                continue
            assert tune.last_result["test_accuracy"] == pytest.approx(trial.value)
            assert tune.config == trial.params
    # nothing failed or was cut short here: each trial of the budget ended COMPLETE, on its
    # first attempt or on a retry (a FAIL for a lost checkpoint runs again)
    ends = [t.state.name for t in newest_attempts(trials).values()]
    assert ends == ["COMPLETE"] * budget, [(t.number, t.state, t.user_attrs) for t in trials]


def _kill_then_resume(config, point: str, env: dict) -> tuple[Driver, Driver]:
    module = "tests.integration.trivial_driver"
    first = Driver([str(config), "--kill", point], env=env, module=module)
    rc = first.wait(300)
    # "KILLED here": the driver's own line, or the trial's (during_upload; a worker's output
    # may not reach the driver before the kill, so there the exit by SIGKILL says it)
    killed = "KILLED here" in first.output or (point == "during_upload" and rc == -9)
    assert rc != 0 and killed, first.output[-4000:]
    resumed = Driver([str(config), "--resume"], env=env, module=module)
    assert resumed.wait(300) == 0, resumed.output[-6000:]
    assert "STUDY ENDED" in resumed.output
    return first, resumed


@pytest.mark.parametrize(
    "point", [p for p in POINTS if p not in ("during_upload", "search_ended", "ended_search_saved")]
)
def test_a_driver_killed_anywhere_resumes_to_one_consistent_record(tmp_path, point):
    store_uri, _key, _ = put_synthetic(tmp_path / "store", clips=8, frames=3, dim=4)
    data = _config(tmp_path, store_uri, {"storage_path": str(tmp_path / "runs")})
    config = write_config(tmp_path / "kill.yaml", data)
    _kill_then_resume(config, point, {EPOCH_ENV: "0.3"})
    run = tmp_path / "runs" / "kill"
    _check_record(f"sqlite:///{run}/optuna.db", str(run))


def test_a_driver_killed_during_a_checkpoint_upload_to_s3_resumes(tmp_path, monkeypatch):
    endpoint = S3Endpoint().start()
    try:
        env = {
            "AWS_ENDPOINT_URL": endpoint.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="lushpo-runs")
        store_uri, _key, _ = put_synthetic(tmp_path / "store", clips=8, frames=3, dim=4)
        optuna_url = f"sqlite:///{tmp_path}/optuna.db"
        storage = {
            "storage_path": "s3://lushpo-runs/studies",
            "endpoint_url": endpoint.url,
            "optuna_storage": optuna_url,
        }
        config = write_config(tmp_path / "kill.yaml", _config(tmp_path, store_uri, storage))
        _kill_then_resume(config, "during_upload", {**env, EPOCH_ENV: "0.3"})
        fs, path = storage_filesystem(load_config(config))
        _check_record(optuna_url, f"{path}/kill", fs)
    finally:
        endpoint.stop()


def test_a_study_killed_after_trial_k_draws_what_the_uninterrupted_one_draws(tmp_path):
    """max_concurrent 1, a fixed seed, TPE past its 10 random start-up trials: killed after its
    11th trial and resumed, the study suggests every trial's params as the whole run does.
    Tune saves its state at every step here (``TUNE_GLOBAL_CHECKPOINT_S=0``), so its record
    holds every finished trial: none runs again (`hpo.search.reconcile`), and the resume's
    draws follow the uninterrupted study's."""
    store_uri, _key, _ = put_synthetic(tmp_path / "store", clips=8, frames=3, dim=4)
    module = "tests.integration.trivial_driver"
    drawn = {}
    every_step = {"TUNE_GLOBAL_CHECKPOINT_S": "0"}
    for name, kill in (("whole", None), ("cut", ["--kill", "between_trials", "--after", "11"])):
        data = _config(tmp_path, store_uri, {"storage_path": str(tmp_path / name)})
        data["budget"] = {**data["budget"], "trials": 13, "max_concurrent": 1, "max_epochs": 1}
        config = write_config(tmp_path / f"{name}.yaml", data)
        if kill:
            first = Driver([str(config), *kill], env=every_step, module=module)
            assert first.wait(300) != 0 and "KILLED here" in first.output, first.output[-3000:]
        driver = Driver(
            [str(config), *(["--resume"] if kill else [])], env=every_step, module=module
        )
        assert driver.wait(300) == 0, driver.output[-4000:]
        study = optuna.load_study(
            study_name="kill", storage=f"sqlite:///{tmp_path}/{name}/kill/optuna.db"
        )
        drawn[name] = [t.params for t in sorted(study.trials, key=lambda t: t.number)]
    assert len(drawn["whole"]) == 13
    assert drawn["cut"] == drawn["whole"]


@pytest.mark.parametrize(
    ("point", "raised"),
    [("search_ended", False), ("search_ended", True), ("ended_search_saved", True)],
)
def test_a_driver_killed_as_its_search_ends_resumes_the_trials_tune_was_running(
    tmp_path, point, raised
):
    """Killed as its search ends, with a trial still running. At "search_ended" (the FINISHED
    after the budget's last ask) Tune's saved record holds the first two trials and lacks the
    last, and its search is saved unended: the resume restores the experiment, which runs its
    trial on, adopts the last one and asks a raised budget's trials itself. At
    "ended_search_saved" Tune saved its search ended: the resume restores the experiment for
    its running trial, then runs a raised budget in a continuation. No trial is cut short."""
    store_uri, _key, _ = put_synthetic(tmp_path / "store", clips=8, frames=3, dim=4)
    data = _config(tmp_path, store_uri, {"storage_path": str(tmp_path / "runs")})
    data["budget"] = {**data["budget"], "trials": 3}
    config = write_config(tmp_path / "kill.yaml", data)
    module = "tests.integration.trivial_driver"
    first = Driver([str(config), "--kill", point], env={EPOCH_ENV: "0.3"}, module=module)
    assert first.wait(300) != 0 and "KILLED here" in first.output, first.output[-3000:]
    run = tmp_path / "runs" / "kill"
    saved = {t.trial_id: t.status for t in ExperimentAnalysis(str(run)).trials}
    # the kill's setting: a trial still running; at "search_ended", the last trial unsaved
    assert len(saved) == (2 if point == "search_ended" else 3), saved
    assert any(status != "TERMINATED" for status in saved.values()), saved
    if raised:
        data["budget"]["trials"] = 5
        write_config(config, data)
    resumed = Driver([str(config), "--resume"], env={EPOCH_ENV: "0.3"}, module=module)
    assert resumed.wait(300) == 0, resumed.output[-6000:]
    continued = point == "ended_search_saved" and raised
    assert ("in a continuation" in resumed.output) == continued, resumed.output[-4000:]
    _check_record(f"sqlite:///{run}/optuna.db", str(run), budget=5 if raised else 3)
    ended = {t.trial_id: t.status for t in ExperimentAnalysis(str(run)).trials}
    assert set(saved) <= set(ended) and set(ended.values()) == {"TERMINATED"}, ended


_FLAT_LAYOUT = """
import sys
import ray.cloudpickle as pickle
from hpo.search import _searcher, _study
path = sys.argv[1]
with open(path, "rb") as f:
    state = pickle.loads(f.read())
sys.modules["hpo.searcher"], sys.modules["hpo.study"] = _searcher, _study
_searcher.StudySearcher.__module__ = "hpo.searcher"
_study._DriverCallbacks.__module__ = "hpo.study"
data = pickle.dumps(state)
assert b"hpo.searcher" in data and b"hpo.study" in data, "nothing of lushpo's in tuner.pkl"
assert b"hpo.search." not in data, "tuner.pkl holds other classes of lushpo's"
with open(path, "wb") as f:
    f.write(data)
"""


def test_a_study_saved_by_the_flat_layout_resumes(tmp_path):
    """Issue 26: a run interrupted under the flat `hpo` layout has a tuner.pkl that names the
    searcher and the callbacks' forwarder by their old modules (`hpo.searcher`, `hpo.study`);
    Tune unpickles it on `--resume`, and the study resumes to one consistent record."""
    store_uri, _key, _ = put_synthetic(tmp_path / "store", clips=8, frames=3, dim=4)
    data = _config(tmp_path, store_uri, {"storage_path": str(tmp_path / "runs")})
    config = write_config(tmp_path / "kill.yaml", data)
    module = "tests.integration.trivial_driver"
    first = Driver([str(config), "--kill", "between_trials", "--after", "2"], module=module)
    assert first.wait(300) != 0 and "KILLED here" in first.output, first.output[-3000:]
    run = tmp_path / "runs" / "kill"
    subprocess.run([sys.executable, "-c", _FLAT_LAYOUT, str(run / "tuner.pkl")], check=True)
    resumed = Driver([str(config), "--resume"], module=module)
    assert resumed.wait(300) == 0, resumed.output[-6000:]
    _check_record(f"sqlite:///{run}/optuna.db", str(run))


def test_a_second_driver_of_a_running_study_is_refused(tmp_path):
    """Issue 23, item 3: `tune --resume` and a fresh `tune` of a study that `lushpo tune` is
    running are both refused in one line naming the holder; the running study ends with an
    intact record that `lushpo export` exports (real CNN-LSTM trials on a tiny synthetic set)."""
    store_uri, _key, _ = put_synthetic(tmp_path / "store", clips=24, frames=4, dim=8)
    data = _config(tmp_path, store_uri, {"storage_path": str(tmp_path / "runs")})
    data |= {"feature_set": {"backbone": "synthetic", "frames": 4},
             "split": {"kind": "stratified", "k": 3, "seed": 0},
             "budget": {"trials": 4, "max_concurrent": 1, "max_epochs": 3, "patience": 3},
             "resources": {"cpu": 1, "intra_op_threads": 1}}  # fmt: skip
    config = write_config(tmp_path / "kill.yaml", data)
    run = tmp_path / "runs" / "kill"
    first = Driver(["--config", str(config)])
    try:
        first.poll_until(lambda: complete_trials(run / "optuna.db") >= 1, 300, "a trial ended")
        second = [Driver(["--config", str(config), *flags]) for flags in (["--resume"], [])]
        for driver in second:
            assert driver.wait(120) == 1, driver.output[-3000:]
            refusals = [
                line for line in driver.output.splitlines() if "is being written by" in line
            ]
            assert len(refusals) == 1, driver.output[-3000:]
            assert f"`lushpo tune` (pid {first.proc.pid} on" in refusals[0]
        assert first.proc.poll() is None, "the first driver ended before the others were refused"
        assert first.wait(300) == 0, first.output[-4000:]
    finally:
        first.kill()
    trials = optuna.load_study(study_name="kill", storage=f"sqlite:///{run}/optuna.db").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    tune_ids = {t.trial_id for t in ExperimentAnalysis(str(run)).trials}
    assert {t.user_attrs[TUNE_ID_ATTR] for t in trials} == tune_ids and len(tune_ids) == 4
    exported = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "export", str(run), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-3000:]
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert card["trial_id"] in tune_ids


def test_a_study_whose_experiment_ended_runs_a_raised_budget_in_a_continuation(tmp_path):
    """Tune adds no trial to an experiment whose search ended (ray#20886): `--resume` with a
    raised budget runs the new trials in a continuation of the run, and every reader (the
    record, export's) sees both experiments' trials; a resume at the same budget runs none."""
    store_uri, _key, _ = put_synthetic(tmp_path / "store", clips=8, frames=3, dim=4)
    data = _config(tmp_path, store_uri, {"storage_path": str(tmp_path / "runs")})
    data["budget"] = {**data["budget"], "trials": 3, "max_epochs": 1}
    config = write_config(tmp_path / "kill.yaml", data)
    module = "tests.integration.trivial_driver"
    first = Driver([str(config)], module=module)
    assert first.wait(300) == 0, first.output[-4000:]
    data["budget"]["trials"] = 5
    write_config(config, data)
    raised = Driver([str(config), "--resume"], module=module)
    assert raised.wait(300) == 0, raised.output[-6000:]
    assert "budget.trials 3 -> 5 (applied)" in raised.output
    assert "run in a continuation, continued-1" in raised.output, raised.output[-4000:]
    run = tmp_path / "runs" / "kill"
    _check_record(f"sqlite:///{run}/optuna.db", str(run), budget=5)
    assert experiment_paths(None, str(run)) == [str(run), f"{run}/continued-1"]
    assert len({ref.candidate.trial_id for ref in _read_run(str(run))}) == 5
    again = Driver([str(config), "--resume"], module=module)
    assert again.wait(300) == 0, again.output[-4000:]
    assert "has already finished; nothing to resume" in again.output
    assert experiment_paths(None, str(run)) == [str(run), f"{run}/continued-1"]

"""hpo.search on a local Ray instance with tiny synthetic feature sets: determinism, the Optuna
storage, all-fail and missing-feature-set errors, name clashes and resume of a finished study."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import optuna
import pyarrow.fs as pafs
import pytest
import ray
from ray.tune import Callback

from hpo.search import (
    SAMPLERS,
    AllTrialsFailedError,
    StudyExistsError,
    StudyProgress,
    from_dict,
    make_sampler,
    results_table,
    run_study,
)
from pipeline.store import FeatureSetNotFoundError
from tests.support.featuresets import put_synthetic
from tests.support.studies import tiny_study

# Tests that start Ray or train are `slow`; the study's own logic runs in `make test-fast`.


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (run_study joins it instead of starting its own)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri, key, _fs = put_synthetic(tmp_path_factory.mktemp("store"), clips=24, frames=4, dim=8)
    return uri, key


def _cfg(tmp_path: Path, store_uri: str, name: str = "s", **sections) -> object:
    return from_dict(tiny_study(tmp_path, store_uri, name, **sections), source="test")


def _history(cfg) -> list[tuple[dict, float]]:
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage.optuna_storage)
    return [(t.params, t.value) for t in sorted(study.trials, key=lambda t: t.number)]


def test_sampler_registry_lists_valid_names():
    assert isinstance(make_sampler("random", 1), optuna.samplers.RandomSampler)
    with pytest.raises(ValueError, match="valid names: \\['cmaes', 'random', 'tpe'\\]"):
        make_sampler("grid", 0)
    assert set(SAMPLERS) == {"tpe", "random", "cmaes"}


def test_missing_feature_set_fails_fast_naming_the_store(tmp_path, store):
    uri, key = store
    cfg = _cfg(tmp_path, uri, feature_set={"backbone": "xception", "frames": 20})
    was_running = ray.is_initialized()
    with pytest.raises(FeatureSetNotFoundError) as info:
        run_study(cfg)
    assert uri in str(info.value) and key in str(info.value)  # names the store and what it holds
    assert ray.is_initialized() == was_running  # failed before any Ray work


@pytest.mark.slow
def test_same_seed_same_sequence_and_metrics_and_optuna_storage(tmp_path, store, local_ray):
    uri, _ = store
    lines: list[str] = []
    runs = []
    for i in range(2):
        cfg = _cfg(tmp_path / f"run{i}", uri, name="det")
        progress = StudyProgress(3, cfg.run_path, cfg.storage.optuna_storage, write=lines.append)
        result = run_study(cfg, callbacks=[progress], log=lines.append)
        runs.append((cfg, result))

    (cfg_a, res_a), (cfg_b, _res_b) = runs
    hist_a, hist_b = _history(cfg_a), _history(cfg_b)
    # (c) the Optuna storage lists every finished trial with its params and value
    assert len(hist_a) == 3 and all(v is not None and params for params, v in hist_a)
    assert sorted(v for _, v in hist_a) == sorted(t.value for t in res_a.trials)
    # (b) same seed ⇒ same sampled configs in the same order, same metrics
    assert [p for p, _ in hist_a] == [p for p, _ in hist_b]
    for (_, va), (_, vb) in zip(hist_a, hist_b, strict=True):
        assert va == pytest.approx(vb, abs=1e-6)
    # every trial reports per-fold metrics, shown in the final table
    for trial in res_a.trials:
        assert len(trial.folds) == 3
        assert trial.metrics["accuracy"] == pytest.approx(
            sum(f["accuracy"] for f in trial.folds) / 3
        )
    table = results_table(res_a)
    assert all(t.trial_id in table for t in res_a.trials)
    assert f"optuna-dashboard {cfg_a.storage.optuna_storage}" in table
    assert any("done 3" in line for line in lines) and any(
        "best accuracy=" in line for line in lines
    )
    # Parameters stay off the screen; every trial's params and results are in the run's log.
    assert not any("lstm_units=" in line for line in lines)
    log = (Path(cfg_a.run_path) / "progress.log").read_text()
    assert log.count(" params: ") == 3 and log.count(" result: ") == 3 and "lstm_units=" in log
    # Tune's result.json and progress.csv per trial, and no TensorBoard event files
    for trial in res_a.trials:
        written = {p.name for p in Path(trial.path).iterdir()}
        assert {"result.json", "progress.csv"} <= written, written
    assert not list(Path(cfg_a.run_path).rglob("events.out.tfevents*"))

    # a second study under the same name refuses, resume of a finished study does nothing
    with pytest.raises(StudyExistsError, match="--resume"):
        run_study(cfg_a)
    again = run_study(cfg_a, resume=True, log=lines.append)
    assert again.already_finished and len(again.trials) == 3
    assert any("already finished" in line for line in lines)
    # --overwrite deletes the run dir, the sqlite file inside it, and starts the study afresh
    one = _cfg(tmp_path / "run0", uri, name="det", budget={"trials": 1})
    fresh = run_study(one, overwrite=True)
    assert len(fresh.trials) == 1 and len(_history(cfg_a)) == 1


class _DeleteStore(Callback):
    """The feature set disappears after the driver checked it, before any trial reads it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def setup(self, **info) -> None:
        shutil.rmtree(self.root / "featuresets")


@pytest.mark.slow
def test_all_trials_failing_ends_with_a_clear_error(tmp_path, local_ray):
    uri, _key, _ = put_synthetic(tmp_path / "store", clips=24, frames=4, dim=8)
    cfg = _cfg(tmp_path, uri, name="doomed", budget={"trials": 2, "max_failures": 0})
    with pytest.raises(AllTrialsFailedError) as info:
        run_study(cfg, callbacks=[_DeleteStore(tmp_path / "store")])
    message = str(info.value)
    assert "all 2 trials of study 'doomed' failed" in message
    assert "FeatureSetNotFoundError" in message and cfg.run_path in message


def test_a_trial_stopped_before_its_test_scores_is_never_the_best():
    from hpo.search import StudyResult, TrialRecord

    final = TrialRecord(
        "done", "TERMINATED", {}, {"test_accuracy": 0.7, "accuracy": 0.7, "final": True}
    )
    # The time budget (or ASHA) stopped this one: it has only a validation score.
    cut = {"val_accuracy": 0.9, "test_accuracy": None, "final": False, "epoch": 7}
    stopped = TrialRecord("cut", "STOPPED", {}, cut)
    unstarted = TrialRecord("late", "STOPPED", {}, {})  # the budget ran out before epoch 1
    result = StudyResult("s", "/runs/s", "sqlite:///x.db", (final, stopped, unstarted))
    assert stopped.value is None and unstarted.value is None and result.best is final
    table = results_table(result)
    assert "best: done accuracy=0.7000" in table
    assert "stopped at epoch 7" in table and "stopped before its first epoch" in table


def test_a_tie_goes_to_the_earlier_trial_in_the_study_and_in_export_alike():
    """The study's best and export's pick (`hpo.results`) rank the same `trial_records`, in run
    order: of two trials with the same scores, the earlier one wins, whatever its id."""
    from ray.tune import Result

    from hpo.search import Objective, StudyResult, trial_records

    scores = {"test_accuracy": 0.8, "accuracy": 0.8, "accuracy_std": 0.1, "final": True}
    results = [  # as Tune lists them: in the order it created the trials
        Result(
            metrics={**scores, "trial_id": trial_id},
            checkpoint=None,
            error=None,
            path=f"/runs/s/{trial_id}",
        )
        for trial_id in ("ffff0000", "0000ffff")
    ]
    records = trial_records(results, Objective())  # type: ignore[arg-type]
    assert [r.trial_id for r in records] == ["ffff0000", "0000ffff"]
    best = StudyResult("s", "/runs/s", "x", records).best
    assert best is not None and best.trial_id == "ffff0000"


@pytest.mark.slow
def test_optuna_record_through_optuna_dashboard(tmp_path, store, local_ray):
    """A study cut short by ASHA and its time budget, read back through optuna-dashboard's HTTP
    API: only COMPLETE trials with their final test score, PRUNED trials with a reason, each
    with its Tune trial id, and intermediate values that are the validation curve only."""
    import json
    import subprocess
    import sys
    import time
    import urllib.request

    from hpo.search import REASON_ATTR, SCHEDULER, TIME_BUDGET, TUNE_ID_ATTR
    from hpo.train import HISTORY
    from tests.support.s3 import free_port

    uri, _ = store
    cfg = _cfg(
        tmp_path, uri, name="record",
        # epochs of a few ms: a report each (ASHA decides at the first report past a rung)
        budget={"trials": 40, "max_concurrent": 2, "max_epochs": 4, "patience": 4,
                "time_budget_s": 60, "report_interval_s": 0},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
    )  # fmt: skip
    result = run_study(cfg, log=lambda _line: None)
    by_id = {t.trial_id: t for t in result.trials}

    port = free_port()
    dashboard = subprocess.Popen(
        [str(Path(sys.executable).with_name("optuna-dashboard")), cfg.storage.optuna_storage,
         "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}/api/studies"
        deadline = time.monotonic() + 60
        while True:
            try:
                listing = json.loads(urllib.request.urlopen(base, timeout=5).read())
                break
            except OSError:
                assert time.monotonic() < deadline, "optuna-dashboard did not answer"
                time.sleep(0.5)
        (study,) = [s for s in listing["study_summaries"] if s["study_name"] == "record"]
        detail = json.loads(urllib.request.urlopen(f"{base}/{study['study_id']}").read())
    finally:
        dashboard.terminate()
        dashboard.wait(30)

    trials = detail["trials"]
    states = {t["state"] for t in trials}
    assert states <= {"Complete", "Pruned"}, states
    reasons = []
    for trial in trials:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        record = by_id[attrs[TUNE_ID_ATTR]]
        results = Path(record.path, "result.json")  # absent: stopped before its first epoch
        lines = results.read_text().splitlines() if results.exists() else []
        epochs = [json.loads(line) for line in lines]
        # each report's epochs since the last (its history): the steps are epochs
        history = [pair for e in epochs if e.get("final") is False for pair in e[HISTORY]]
        curve = [val for _epoch, val in history]
        steps = [int(epoch) for epoch, _val in history]
        intermediate = trial["intermediate_values"]
        assert [v["step"] for v in intermediate] == steps[: len(intermediate)]
        assert [v["value"] for v in intermediate] == pytest.approx(curve[: len(intermediate)])
        if trial["state"] == "Complete":
            assert record.value is not None and trial["values"][0] == pytest.approx(record.value)
            assert REASON_ATTR not in attrs
        else:
            assert record.value is None, "a trial with a test score was pruned"
            reasons.append(attrs[REASON_ATTR])
    assert {"Complete", "Pruned"} <= states
    assert set(reasons) <= {TIME_BUDGET, SCHEDULER} and SCHEDULER in reasons, reasons


@pytest.mark.slow
def test_resume_refuses_changed_training_settings_naming_them(tmp_path, store, local_ray):
    from hpo.search import SETTINGS_FILE, StudySettingsChangedError

    uri, _ = store
    cfg = _cfg(tmp_path, uri, name="strict", budget={"trials": 1})
    run_study(cfg, log=lambda _m: None)
    recorded = json.loads((Path(cfg.run_path) / SETTINGS_FILE).read_text())
    assert recorded["validation_fraction"] == 0.2 and recorded["split"] == "stratified"
    changed = _cfg(tmp_path, uri, name="strict", budget={"trials": 1, "patience": 3},
                   training={"validation_fraction": 0.3})  # fmt: skip
    with pytest.raises(StudySettingsChangedError) as err:
        run_study(changed, resume=True, log=lambda _m: None)
    message = str(err.value)
    assert "training.validation_fraction was 0.2, now 0.3" in message
    assert "budget.patience was 2, now 3" in message and "--overwrite" in message
    # The same settings resume (here: nothing left to run).
    assert run_study(cfg, resume=True, log=lambda _m: None).already_finished


@pytest.mark.slow
def test_rescore_retrains_the_top_trials_and_export_takes_the_rescored_winner(
    tmp_path, store, local_ray
):
    from hpo.results import export_best, rescore_table
    from hpo.search import RESCORE_FILE, run_rescore, top_trials

    uri, _ = store
    cfg = _cfg(tmp_path, uri, name="rescored", rescore={"top_k": 2, "seeds": 2})
    result = run_study(cfg, log=lambda _m: None)
    record = run_rescore(cfg, result, log=lambda _m: None)
    top = top_trials(result, 2)
    assert [r["trial_id"] for r in record["trials"]] == [t.trial_id for t in top]
    assert len(record["seeds"]) == 2 and cfg.training.seed not in record["seeds"]
    for row, trial in zip(record["trials"], top, strict=True):
        assert row["study_accuracy"] == trial.value
        assert [r["seed"] for r in row["runs"]] == sorted(record["seeds"])
        assert row["mean"] == pytest.approx(np.mean([r["accuracy"] for r in row["runs"]]))
    assert record["winner"] == max(record["trials"], key=lambda r: r["mean"])["trial_id"]
    assert "winner, exported" in rescore_table(record)
    lines: list[str] = []  # a rerun keeps the record instead of retraining
    assert run_rescore(cfg, result, log=lines.append) == record
    assert any("already done" in line for line in lines)

    # The export follows rescore.json's winner, even when it is not the study's best.
    runner_up = record["trials"][1]["trial_id"]
    forged = {**record, "winner": runner_up}
    (Path(cfg.run_path) / RESCORE_FILE).write_text(json.dumps(forged))
    here = Path.cwd()
    try:  # a relative run path works (Ray alone reads it as a URI without a scheme)
        os.chdir(tmp_path)
        card = export_best(f"runs/{cfg.name}", "out", store=uri).card
    finally:
        os.chdir(here)
    assert card["trial_id"] == runner_up and card["selection"]["rescored"] is True
    assert card["rescore"]["winner"] == runner_up
    # A rescore.json of another split is refused, and one whose winner is no trial of this run
    # (issue 26: that raised AttributeError): the study's own best is exported.
    for refused, says in (
        ({"split": {"digest": "0" * 64}}, "rescore.json refused: it is for feature set"),
        ({"winner": "0a0b0c0d"}, "rescore.json refused: its winner 0a0b0c0d is not a trial here"),
    ):
        (Path(cfg.run_path) / RESCORE_FILE).write_text(json.dumps({**forged, **refused}))
        lines = []
        card = export_best(
            cfg.run_path, tmp_path / "out", store=uri, overwrite=True, log=lines.append
        ).card
        assert card["trial_id"] == result.best.trial_id and card["selection"]["rescored"] is False
        assert any(says in line for line in lines), lines


class _CannotStart(Callback):
    """The new study fails after the old one was set aside, before any trial of it started."""

    def setup(self, **info) -> None:
        raise RuntimeError("the new study cannot start")


@pytest.mark.slow
def test_overwrite_keeps_the_old_study_until_a_trial_of_the_new_one_starts(
    tmp_path, store, local_ray
):
    from tests.support.trivial_trial import train_trivial

    uri, _key = store
    cfg = _cfg(tmp_path, uri, name="kept", budget={"trials": 1})
    first = run_study(cfg, log=lambda _line: None, train=train_trivial)
    run = Path(cfg.run_path)
    listing = {p.relative_to(run).as_posix(): p.stat().st_size for p in run.rglob("*")}

    with pytest.raises(Exception, match="the new study cannot start"):
        run_study(cfg, overwrite=True, callbacks=[_CannotStart()], train=train_trivial)
    assert {p.relative_to(run).as_posix(): p.stat().st_size for p in run.rglob("*")} == listing
    assert [t.value for t in optuna.load_study(study_name="kept", storage=cfg.storage.optuna_storage
                                               ).trials] == [first.trials[0].value]  # fmt: skip
    assert not list(run.parent.glob(".kept.replaced-*"))

    again = run_study(cfg, overwrite=True, log=lambda _line: None, train=train_trivial)
    assert again.trials[0].trial_id != first.trials[0].trial_id
    assert not list(run.parent.glob(".kept.replaced-*")), "the old study was not removed"
    assert len(optuna.get_all_study_names(cfg.storage.optuna_storage)) == 1


def test_an_s3_run_folder_is_set_aside_not_deleted_until_the_new_study_starts(
    tmp_path, s3_endpoint
):
    """Issue 23: S3 has no rename, so `--overwrite` used to delete an S3 run folder outright.
    It is copied aside by the server now: put back as it was when the new study fails to
    start, removed once it starts (a real S3 endpoint: moto on loopback)."""
    import boto3

    from hpo.search._prepare import storage_filesystem
    from hpo.search._run_folder import _SetAside

    boto3.client("s3").create_bucket(Bucket="lushpo-aside")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = {"storage_path": "s3://lushpo-aside/runs", "endpoint_url": s3_endpoint.url,
               "optuna_storage": url}  # fmt: skip
    cfg = _cfg(tmp_path, "file:///nowhere", name="old", storage=storage)
    fs, path = storage_filesystem(cfg)
    run = f"{path}/old"
    old = {"tuner.pkl": b"t", "lushpo-settings.json": b"{}", "trial_0/fold-0.h5": b"h" * 4096}
    for key, data in old.items():
        with fs.open_output_stream(f"{run}/{key}") as out:
            out.write(data)
    optuna.create_study(study_name="old", storage=url).add_trial(
        optuna.trial.create_trial(params={}, distributions={}, value=0.5)
    )

    def listing(prefix: str) -> dict[str, bytes]:
        found = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
        return {
            i.path[len(prefix) + 1 :]: fs.open_input_stream(i.path).read()
            for i in found
            if i.type == pafs.FileType.File
        }

    def asides() -> list[str]:
        return [i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                if ".replaced-" in i.base_name]  # fmt: skip

    aside = _SetAside(fs, run, url, ["old"])
    assert listing(run) == {} and asides(), "the old run was not moved aside"
    with fs.open_output_stream(f"{run}/tuner.pkl") as out:  # the new study's first file
        out.write(b"new")
    aside.restore(fs, ["old"])  # the new study never started
    assert listing(run) == old and not asides()
    assert [t.value for t in optuna.load_study(study_name="old", storage=url).trials] == [0.5]

    aside = _SetAside(fs, run, url, ["old"])
    aside.drop()  # the new study's first trial started
    assert listing(run) == {} and not asides()


@pytest.mark.slow
def test_resume_refuses_a_grid_run_study_by_study_by_an_older_lushpo(tmp_path, store, local_ray):
    """Before a grid's cells ran as one experiment, each cell folder held its own Ray Tune
    experiment. Resuming such a run in this layout would start its cells afresh and leave their
    trials out of the export: it is refused in one line, and nothing in the folder changes."""
    from hpo.search import run_studies
    from tests.support.trivial_trial import train_trivial

    uri, _key = store
    grid = tmp_path / "runs" / "grid"
    optuna_url = f"sqlite:///{grid}/optuna.db"
    grid.mkdir(parents=True)

    def cell(name: str):
        return _cfg(tmp_path, uri, name=name, budget={"trials": 1},
                    storage={"storage_path": str(grid), "optuna_storage": optuna_url})  # fmt: skip

    run_study(cell("a-4"), log=lambda _line: None, train=train_trivial)  # the older layout
    experiment = _cfg(tmp_path, uri, name="grid", storage={"optuna_storage": optuna_url})
    listing = sorted(p.relative_to(grid).as_posix() for p in grid.rglob("*"))
    with pytest.raises(StudyExistsError, match="run study by study by an older lushpo") as err:
        run_studies(experiment, [cell("a-4"), cell("a-5")], resume=True, train=train_trivial,
                    log=lambda _line: None)  # fmt: skip
    assert "in the folders of a-4)" in str(err.value) and "--overwrite" in str(err.value)
    assert sorted(p.relative_to(grid).as_posix() for p in grid.rglob("*")) == listing

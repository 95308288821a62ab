"""Issue 4: faults during a study — a trial that keeps failing, a worker node that dies, an S3
endpoint that goes away — and resume from run storage on S3 after every local file is gone.

Every test runs a tiny study (synthetic features, 2 folds, 2-3 epochs) on its own Ray instance:
run_study starts (and stops) a local one, or joins a `ray.cluster_utils.Cluster`; drivers run as
subprocesses are killed by process group (tests.integration.driver). No fixed ports.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import boto3
import optuna
import pyarrow.fs as pafs
import pytest
import ray
from ray.cluster_utils import Cluster
from ray.tune import Callback, ExperimentAnalysis

from hpo.search import FAILURE, REASON_ATTR, RETRY_ATTR, from_dict, run_study
from pipeline.store import open_store
from tests.integration.driver import Driver, write_config
from tests.integration.test_resume import done_trials
from tests.support.featuresets import put_synthetic, synthetic_feature_set
from tests.support.studies import checkpointed_study, with_sections

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COMPLETE = optuna.trial.TrialState.COMPLETE
FAIL = optuna.trial.TrialState.FAIL
RUNNING = optuna.trial.TrialState.RUNNING


def _study(tmp_path: Path, store: str, name: str, **sections) -> dict:
    """`checkpointed_study` with 4 trials sampled at random and a cache per node."""
    base = checkpointed_study(
        tmp_path,
        store,
        name,
        budget={"trials": 4},
        searcher={"sampler": "random", "seed": 0},  # its first 4 trials: frames 3, 4, 3, 4
        cache_dir=str(tmp_path / "cache-{node_id}"),
    )
    return with_sections(base, **sections)


def _optuna_states(cfg) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage.optuna_storage)
    return sorted(study.trials, key=lambda t: t.number)


# --- a trial that keeps failing --------------------------------------------------------------


class _DeleteFeatureSet(Callback):
    """One feature set vanishes after the driver checked it: trials that read it always fail."""

    def __init__(self, key_dir: Path) -> None:
        self.key_dir = key_dir

    def setup(self, **info) -> None:
        shutil.rmtree(self.key_dir)


def test_trial_that_keeps_failing_is_retried_then_marked_failed_and_the_study_goes_on(tmp_path):
    root = tmp_path / "store"
    uri, _k3, _ = put_synthetic(root, clips=12, frames=3, dim=4)
    _uri, k4, _ = put_synthetic(root, clips=12, frames=4, dim=4)
    cfg = from_dict(
        _study(tmp_path, uri, "flaky", feature_set={"frames": [3, 4]}, budget={"trials": 4}),
        source="test",
    )
    result = run_study(cfg, callbacks=[_DeleteFeatureSet(root / "featuresets" / k4)])

    failed = [t for t in result.trials if t.error]
    done = [t for t in result.trials if not t.error]
    assert len(result.trials) == 4
    assert {t.params["frames"] for t in failed} == {4} and {t.params["frames"] for t in done} == {3}
    assert failed and done  # the seed samples both; the study went on past the failures
    assert all("FeatureSetNotFoundError" in t.error and k4 in t.error for t in failed)
    # bounded retries: each failing trial ran 1 + max_failures times, no more
    analysis = ExperimentAnalysis(cfg.run_path)
    for trial in analysis.trials:
        expected = 1 + cfg.budget.max_failures if trial.config["frames"] == 4 else 0
        assert trial.run_metadata.num_failures == expected, trial
    trials = _optuna_states(cfg)
    states = [t.state for t in trials]
    assert states.count(FAIL) == len(failed) and states.count(COMPLETE) == len(done)
    assert all(t.user_attrs[REASON_ATTR] == FAILURE for t in trials if t.state == FAIL)


# --- a worker node dies while its trial runs -------------------------------------------------


class _DriverOnly(Callback):
    """A callback holding live test objects (a cluster, an endpoint): Tune pickles its run config
    into the experiment state, where only the callback's plain results go."""

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k in ("killed_trial", "stopped_at")}


class _KillNodeOnResult(_DriverOnly):
    """On the first result of a trial that runs on `node`'s raylet, SIGKILL that node."""

    def __init__(self, cluster: Cluster, node) -> None:
        self.cluster, self.node = cluster, node
        self.killed_trial: str | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self.killed_trial is None and result.get("node_id") == self.node.node_id:
            self.killed_trial = trial.trial_id
            self.cluster.remove_node(self.node, allow_graceful=False)
            # The trial's worker exits only once it notices its raylet is gone, and a tiny trial
            # could finish first. Holding the driver here holds the trial too (it waits at its
            # report for the driver to take it) until the cluster has marked the node dead.
            deadline = time.monotonic() + 120
            while any(n["NodeID"] == self.node.node_id and n["Alive"] for n in ray.nodes()):
                assert time.monotonic() < deadline, "the killed node was never marked dead"
                time.sleep(0.5)


@pytest.fixture
def two_nodes(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # Cluster sets it; undone at teardown
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, worker
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def test_worker_raylet_killed_mid_trial_is_retried_from_its_checkpoint(tmp_path, two_nodes):
    cluster, worker = two_nodes
    uri, _key, _ = put_synthetic(tmp_path / "store", clips=12, frames=3, dim=4)
    data = _study(
        tmp_path,
        uri,
        "node-loss",
        address=cluster.address,
        budget={
            "trials": 3,
            "max_concurrent": 2,
            "max_epochs": 3,
            "patience": 3,
            "max_failures": 2,
            "report_interval_s": 0,  # every epoch: the kill lands mid-trial
        },
    )
    cfg = from_dict(data, source="test")
    killer = _KillNodeOnResult(cluster, worker)
    result = run_study(cfg, callbacks=[killer])

    assert killer.killed_trial is not None, "no trial ran on the worker node"
    assert len(result.trials) == 3 and all(t.error is None for t in result.trials)
    (trial,) = [
        t for t in ExperimentAnalysis(cfg.run_path).trials if t.trial_id == killer.killed_trial
    ]
    assert trial.status == "TERMINATED" and trial.run_metadata.num_failures == 1
    # Retried to the end. The node dies asynchronously, so the first attempt may report a few more
    # epochs after the kill is requested; the retry then continues after the newest checkpoint
    # that reached storage ([1, 2, 3, 3] or [1, 2, 3]), or, when none had, from scratch
    # ([1, 1, 2, 3]; see docs/resume.md).
    epochs = [r["epoch"] for r in _rows(Path(trial.path)) if not r.get("final")]
    restarts = [i for i in range(1, len(epochs)) if epochs[i] <= epochs[i - 1]]
    assert len(restarts) <= 1, epochs
    cut = restarts[0] if restarts else len(epochs)
    before, after = epochs[:cut], epochs[cut:]
    assert before == list(range(1, len(before) + 1)), epochs
    assert after == list(range(after[0], 4)) if after else before[-1] == 3, epochs
    assert epochs[-1] == 3, epochs
    assert trial.last_result["node_id"] != worker.node_id


def _rows(trial_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (trial_dir / "result.json").read_text().splitlines()]


# --- run storage on S3: resume on a "new cluster" ----------------------------------------------


def test_resume_from_s3_run_storage_after_every_local_file_is_gone(tmp_path, s3_endpoint):
    s3 = boto3.client("s3")
    for bucket in ("lushpo-features", "lushpo-runs"):
        s3.create_bucket(Bucket=bucket)
    store_uri = "s3://lushpo-features/store"
    open_store(store_uri, cache_dir=tmp_path / "writer-cache").put(
        synthetic_feature_set(clips=12, frames=3, dim=4)
    )
    durable = tmp_path / "postgres-stand-in"  # the Optuna DB outlives the cluster (docs/resume.md)
    durable.mkdir()
    optuna_url = f"sqlite:///{durable}/optuna.db"

    def node_dirs() -> tuple[Path, dict[str, str]]:
        # All the local state of one "cluster": Ray's temp dir (short: socket paths), HOME
        # (~/ray_results, ~/.keras) and the node cache.
        local = Path(tempfile.mkdtemp(prefix="l4-", dir="/tmp"))
        (local / "home").mkdir()
        env = {"RAY_TMPDIR": str(local), "HOME": str(local / "home")}
        return local, env

    data = _study(
        tmp_path,
        store_uri,
        "on-s3",
        storage={"storage_path": "s3://lushpo-runs/studies", "optuna_storage": optuna_url},
        budget={"trials": 4},
    )
    local, env = node_dirs()
    data["cache_dir"] = str(local / "cache")
    config = write_config(tmp_path / "on-s3.yaml", data)
    first = Driver(["--config", str(config)], env=env)
    try:
        first.wait_for(lambda lines: len(done_trials(lines)) >= 2, 300, "two trials done")
        first.kill()
    finally:
        first.reap()
    before = done_trials(first.lines)
    shutil.rmtree(local)  # every local file of the run, the node cache included
    assert not local.exists()

    local, env = node_dirs()
    data["cache_dir"] = str(local / "cache")
    write_config(config, data)
    try:
        resumed = Driver(["--config", str(config), "--resume"], env=env)
        assert resumed.wait(400) == 0, resumed.output
    finally:
        shutil.rmtree(local, ignore_errors=True)

    endpoint = s3_endpoint.url.split("://", 1)[1]
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http")
    analysis = ExperimentAnalysis("lushpo-runs/studies/on-s3", storage_filesystem=fs)
    assert len(analysis.trials) == 4
    statuses = [(t.trial_id, t.status) for t in analysis.trials]
    assert all(s == "TERMINATED" for _, s in statuses), (statuses, resumed.output[-5000:])
    values = {t.trial_id: t.last_result["accuracy"] for t in analysis.trials}
    study = optuna.load_study(study_name="on-s3", storage=optuna_url)
    states = [t.state for t in study.trials]
    firsts = [t for t in study.trials if RETRY_ATTR not in t.user_attrs]
    assert RUNNING not in states and [t.state for t in firsts] == [COMPLETE] * 4
    # Tune uploads its experiment state to S3 now and then: a trial finished after the last
    # upload is not in it, and runs again with the same params (a marked retry)
    again = {t.user_attrs[RETRY_ATTR]: t for t in study.trials if RETRY_ATTR in t.user_attrs}
    for trial_id, value in before.items():
        if trial_id in values:
            assert values[trial_id] == pytest.approx(value, abs=5e-5)
        else:
            (lost,) = [t for t in firsts if t.user_attrs["tune_trial_id"] == trial_id]
            assert again[lost.number].params == lost.params
            assert again[lost.number].user_attrs["tune_trial_id"] in values


# --- the S3 endpoint stops during a study ------------------------------------------------------


class _StopEndpoint(_DriverOnly):
    """After the first trial completes: the endpoint goes away and the node caches with it."""

    def __init__(self, endpoint, caches: Path) -> None:
        self.endpoint, self.caches = endpoint, caches
        self.stopped = False

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if not self.stopped:
            self.endpoint.stop()
            for cache in self.caches.glob("cache-*"):
                shutil.rmtree(cache)
            self.stopped = True


def test_s3_outage_fails_trials_clearly_then_resume_finishes_the_study(tmp_path, s3_endpoint):
    boto3.client("s3").create_bucket(Bucket="lushpo-features")
    store_uri = "s3://lushpo-features/store"
    open_store(store_uri, cache_dir=tmp_path / "writer-cache").put(
        synthetic_feature_set(clips=12, frames=3, dim=4)
    )
    cfg = from_dict(
        _study(tmp_path, store_uri, "outage", budget={"trials": 3, "max_failures": 0}),
        source="test",
    )
    stopper = _StopEndpoint(s3_endpoint, tmp_path)
    first = run_study(cfg, callbacks=[stopper])

    ok = [t for t in first.trials if not t.error]
    failed = [t for t in first.trials if t.error]
    assert len(ok) == 1 and len(failed) == 2
    for trial in failed:  # a clear error: what, which endpoint, which bucket
        assert "StoreUnavailableError" in trial.error
        assert (
            s3_endpoint.url.split("://", 1)[1] in trial.error and "lushpo-features" in trial.error
        )
        assert "still failing after" in trial.error, "retries not bounded by the outage window"

    s3_endpoint.start()
    second = run_study(cfg, resume=True)
    assert len(second.trials) == 3 and all(t.error is None for t in second.trials)
    (kept,) = [t for t in second.trials if t.trial_id == ok[0].trial_id]
    assert kept.value == pytest.approx(ok[0].value, abs=1e-6)
    # the Optuna history shows the failed attempts and their successful retries
    trials = _optuna_states(cfg)
    assert [t.state for t in trials].count(FAIL) == 2
    retries = [t for t in trials if RETRY_ATTR in t.user_attrs]
    assert len(retries) == 2 and all(t.state == COMPLETE for t in retries)
    assert {t.user_attrs[RETRY_ATTR] for t in retries} == {
        t.number for t in trials if t.state == FAIL and t.user_attrs[REASON_ATTR] == FAILURE
    }
    assert RUNNING not in [t.state for t in trials]

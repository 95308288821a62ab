"""The RayJob's own entrypoint, submitted through the Ray Jobs API as KubeRay's submitter does it.

A cluster started with the `ray` CLI on loopback like the RayJob's (a head with no CPUs that runs
only drivers, two worker nodes, token authentication on, the dashboard's job API), its processes
carrying the head container's environment with local places in it: the shared data, a moto S3
endpoint for the feature store and the Ray Tune run storage, a local Optuna file. Only the study
config is swapped, for a tiny one. The job is stopped mid-study (`ray job stop`) and submitted
again, as KubeRay's `backoffLimit` does: the second attempt finds the feature set in the store,
resumes the study from S3 and ends with exactly the configured number of trials."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import yaml

from tests.deploy_tests.conftest import find, render
from tests.deploy_tests.test_rayjob_entrypoint import head_environment
from tests.support.ray_cli import RayCLICluster, budget_states, complete_trials
from tests.support.s3 import S3Endpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY = str(Path(sys.executable).with_name("ray"))
BUCKET = "lushpo-job"
TRIALS = 4


@pytest.fixture(scope="module")
def s3():
    endpoint = S3Endpoint().start()
    boto3.client("s3", endpoint_url=endpoint.url, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing",
                 ).create_bucket(Bucket=BUCKET)  # fmt: skip
    yield endpoint
    endpoint.stop()


def _tiny_study(path: Path) -> Path:
    """The paper's split and backbone with 5 frames, small heads and 2 epochs."""
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "feature_set": {"backbone": "xception", "frames": 5, "sampling": "even"},
                "split": {"kind": "paper"},
                "space": {
                    "lstm_units": [8, 16],
                    "dense_layers": 1,
                    "dense_units_1": [8, 16],
                    "batch_size": [16],
                },
                "budget": {"trials": TRIALS, "max_concurrent": 1, "max_epochs": 3, "patience": 2},
                "searcher": {"sampler": "tpe", "seed": 0},
                "resources": {"cpu": 1, "intra_op_threads": 1},
            }
        )
    )
    return path


def _environment(docs, s3: S3Endpoint, tmp: Path, data_dir: Path, weights: Path) -> dict:
    """The head container's environment, every place in it made local."""
    env = head_environment(docs)
    cache = tmp / "cache"
    local = {
        "LUSHPO_DATA_DIR": str(data_dir),
        "LUSHPO_WEIGHTS": str(weights),  # the shared copy of Keras' Xception ImageNet file
        "LUSHPO_STORE": f"s3://{BUCKET}/store",
        "LUSHPO_STORAGE_PATH": f"s3://{BUCKET}/runs",
        "LUSHPO_OPTUNA_STORAGE": f"sqlite:///{tmp / 'optuna.db'}",
        "LUSHPO_RESULTS_DIR": str(tmp / "results"),
        "LUSHPO_CACHE_DIR": str(cache),
        "KERAS_HOME": str(tmp / "keras"),
        "MPLCONFIGDIR": str(tmp / "mpl"),
        "AWS_ENDPOINT_URL": s3.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    unknown = set(local) - set(env)
    assert not unknown, f"the head container does not set {unknown}"
    return env | local


def _submit(cluster: RayCLICluster, entrypoint: str, submission_id: str) -> None:
    """KubeRay's submitter: the entrypoint pasted into its own shell line."""
    line = (f"{shlex.quote(RAY)} job submit --address {cluster.dashboard_url} "
            f"--submission-id {submission_id} --no-wait -- {entrypoint}")  # fmt: skip
    done = subprocess.run(["bash", "-c", line], env=cluster.env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def _job(cluster: RayCLICluster, *args: str) -> str:
    done = subprocess.run([RAY, "job", *args, "--address", cluster.dashboard_url],
                          env=cluster.env, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    return done.stdout + done.stderr


_STATUS = {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}


def _status(cluster: RayCLICluster, submission_id: str) -> str:
    """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED, as `ray job status` words it."""
    out = re.sub(r"\x1b\[[0-9;]*m", "", _job(cluster, "status", submission_id))
    match = re.search(rf"Job '{submission_id}' (succeeded|failed|was stopped)", out)
    if match:
        return _STATUS[match.group(1)]
    match = re.search(rf"Status for job '{submission_id}': (\w+)", out)
    return match.group(1) if match else out


def _wait(condition, timeout: float, what: str, logs, failed=lambda: False) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if failed() or time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s; job logs:\n{logs()[-4000:]}")
        time.sleep(2)


def test_rayjob_entrypoint_through_the_jobs_api_resumes_after_a_stop(
    s3, shared_data_dir, xception_weights, tmp_path, tmp_path_factory
):
    docs = [d for d in yaml.safe_load_all(render("cpu")) if d]
    rayjob = find(docs, "RayJob")["spec"]
    head_params = rayjob["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert head_params["num-cpus"] == "0"
    study = _tiny_study(tmp_path / "study.yaml")
    assert "/etc/lushpo/study.yaml" in rayjob["entrypoint"]
    entrypoint = rayjob["entrypoint"].replace("/etc/lushpo/study.yaml", str(study))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LUSHPO_", "AWS_"))}
    env["HOME"] = str(tmp_path_factory.mktemp("home"))  # no ~/.ray/auth_token of the host
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # as in the image
    env |= _environment(docs, s3, tmp_path, shared_data_dir, xception_weights)
    cluster = RayCLICluster(env, token=True, dashboard=True)
    try:
        cluster.start(worker_cpus=(1, 1), head_cpus=0)
        optuna_db = tmp_path / "optuna.db"

        _submit(cluster, entrypoint, "lushpo-study-1")
        logs1 = lambda: _job(cluster, "logs", "lushpo-study-1")  # noqa: E731
        ended = lambda: _status(cluster, "lushpo-study-1") in ("FAILED", "SUCCEEDED")  # noqa: E731
        _wait(lambda: complete_trials(optuna_db) >= 1, 900, "no trial finished", logs1, ended)
        assert complete_trials(optuna_db) < TRIALS, "the study ended before it was stopped"
        assert "lushpo run [" in logs1() and "tune" in logs1()
        _job(cluster, "stop", "lushpo-study-1")
        _wait(lambda: _status(cluster, "lushpo-study-1") == "STOPPED", 120, "no stop", logs1)
        puts = s3.count("PUT", "features.npy")
        assert puts == 1, f"features.npy PUT {puts} times"

        _submit(cluster, entrypoint, "lushpo-study-2")
        logs2 = lambda: _job(cluster, "logs", "lushpo-study-2")  # noqa: E731
        _wait(lambda: _status(cluster, "lushpo-study-2") in ("SUCCEEDED", "FAILED"), 900,
              "the resubmitted job did not end", logs2)  # fmt: skip
        output = logs2()
        assert _status(cluster, "lushpo-study-2") == "SUCCEEDED", output[-4000:]
    finally:
        cluster.stop()
    assert not cluster.pids(), "cluster processes survived teardown"

    assert "found in store" in output, "the second attempt extracted again"
    assert s3.count("PUT", "features.npy") == 1
    states = budget_states(optuna_db)
    assert states == ["COMPLETE"] * TRIALS, f"the resumed study ran a different budget: {states}"
    name = env["LUSHPO_STUDY"]
    runs = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    listed = runs.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{name}/")
    assert listed.get("KeyCount", 0) > 0, "no run storage in S3"
    export = tmp_path / "results" / name
    card = json.loads((export / "model_card.json").read_text())
    assert card["backbone"] == "xception" and card["frames"] == 5
    report = json.loads((export / "report.json").read_text())
    assert report, "evaluate wrote an empty report"

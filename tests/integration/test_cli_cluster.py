"""The paper's experiment on a cluster started with the `ray` CLI, token authentication on:
`lushpo features` spreads 2 backbones × 2 frame counts over both nodes and writes each set to a
real S3 endpoint once; a grid study with `lushpo tune --address` gives every cell its own best
trial; `lushpo export` + `lushpo evaluate` set those cells beside the paper's 68 rows. Without
the token, both verbs fail with one line naming what to set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

from pipeline.store import open_store
from tests.support.clips import write_clip
from tests.support.ray_cli import RayCLICluster
from tests.support.s3 import S3Endpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LUSHPO = str(Path(sys.executable).with_name("lushpo"))
STORE = "s3://lushpo-grid/store"
CELLS = {"mobilenetv2-5", "mobilenetv2-10", "nasnetmobile-5", "nasnetmobile-10"}


@pytest.fixture(scope="module")
def s3():
    endpoint = S3Endpoint().start()
    env = {
        "AWS_ENDPOINT_URL": endpoint.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    boto3.client("s3", endpoint_url=endpoint.url, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing",
                 ).create_bucket(Bucket="lushpo-grid")  # fmt: skip
    yield endpoint, env
    endpoint.stop()


@pytest.fixture(scope="module")
def base_env(s3, tmp_path_factory):
    """What every process here sees: the S3 endpoint, no Ray address or token of the host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LUSHPO_"))}
    env |= s3[1] | {"PYTHONUNBUFFERED": "1"}
    env["HOME"] = str(tmp_path_factory.mktemp("home"))  # no ~/.ray/auth_token of the host
    return env


@pytest.fixture(scope="module")
def cluster(base_env):
    """Head + one worker node, one CPU each, token authentication on."""
    started = RayCLICluster(base_env, token=True)
    try:
        yield started.start(worker_cpus=(1,), head_cpus=1)
    finally:
        started.stop()
    assert not started.pids(), "cluster processes survived teardown"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Nine 12-frame clips, three per class."""
    root = tmp_path_factory.mktemp("grid-data")
    for k, name in enumerate(
        [f"{p}-synthetic-{i}.{ext}" for p in ("Cov", "Pneu", "Reg") for i, ext in
         enumerate(("mp4", "avi", "gif"))]
    ):  # fmt: skip
        write_clip(root / "pocus" / "convex" / name, 12, first_index=5 * k)
    return root


def lushpo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LUSHPO, *args], env=env, capture_output=True, text=True, timeout=900, check=False
    )


def test_features_grid_study_and_table_on_a_token_cluster(
    cluster, base_env, s3, data_dir, shared_data_dir, tmp_path, monkeypatch
):
    endpoint = s3[0]
    for key, value in s3[1].items():  # this process reads the store too
        monkeypatch.setenv(key, value)
    features = [
        "features", "--backbone", "mobilenetv2,nasnetmobile", "--frames", "5,10",
        "--weights", "none", "--store", STORE, "--data-dir", str(data_dir),
        "--address", cluster.address, "--batch-size", "10",
    ]  # fmt: skip

    config = _grid_config(tmp_path)
    tune = ["tune", "--config", str(config), "--address", cluster.address]

    refused(features, base_env)

    # The token in ~/.ray/auth_token, RAY_AUTH_MODE unset: Ray's convention for `ray start`.
    (Path(base_env["HOME"]) / ".ray").mkdir()
    (Path(base_env["HOME"]) / ".ray" / "auth_token").write_text(cluster.token)
    done = lushpo(*features, env=base_env)
    assert done.returncode == 0, done.stderr
    assert cluster.token not in done.stdout + done.stderr
    store = open_store(STORE, cache_dir=tmp_path / "reader-cache")
    sets = store.list()
    assert sorted((m["spec"]["backbone"], m["spec"]["frames"]) for m in sets) == [
        ("mobilenetv2", 5), ("mobilenetv2", 10), ("nasnetmobile", 5), ("nasnetmobile", 10)
    ]  # fmt: skip
    nodes = {n for m in sets for n in m["meta"]["computed_on"]["nodes"]}
    assert len(nodes) == 2, f"work ran on {nodes}, not on both nodes"
    puts = endpoint.count("PUT", "features.npy")
    assert puts == 4, f"features.npy PUT {puts} times for 4 sets"
    every_put = endpoint.count("PUT")

    again = lushpo(*features, env=base_env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("found in store") == 4
    assert endpoint.count("PUT") == every_put, "a rerun wrote to the store"

    # The grid: one study per cell, 2 trials each, on the cluster; refused without the token.
    without = {**base_env, "HOME": str(tmp_path)}
    refused(tune, without)
    done = lushpo(*tune, env=base_env)
    assert done.returncode == 0, done.stderr[-3000:]
    for cell in CELLS:
        assert f"{cell}: best mean CV accuracy" in done.stdout, done.stdout

    out = tmp_path / "out"
    done = lushpo("export", str(tmp_path / "runs" / "grid"), "--out", str(out), "--store", STORE,
                  "--cache-dir", str(tmp_path / "export-cache"), env=base_env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    paper_csv = shared_data_dir / "paper" / "evaluation.csv"
    done = lushpo("evaluate", str(out), "--paper-csv", str(paper_csv), "--store", STORE,
                  "--cache-dir", str(tmp_path / "export-cache"), env=base_env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads((out / "paper_table.json").read_text())
    assert table["cells_total"] == 68 and table["cells_run"] == 4
    run = {r["model_label"] for r in table["rows"] if r["run"]}
    assert run == CELLS
    for row in table["rows"]:
        if row["run"]:
            assert 0 <= row["accuracy"]["mean"] <= 1 and row["paper_rank"] >= 1
            assert row["delta_accuracy"] == pytest.approx(
                row["accuracy"]["mean"] - row["paper_accuracy"]["mean"]
            )
    markdown = (out / "paper_table.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert sum("not run" in line for line in rows) == 64
    assert (out / "paper_table.png").stat().st_size > 0


def refused(argv: list[str], env: dict[str, str]) -> None:
    """No token anywhere: one line that says what to set, never a traceback."""
    done = lushpo(*argv, env=env)
    assert done.returncode == 1, done.stderr
    assert "RAY_AUTH_TOKEN" in done.stderr and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "lushpo" in line]
    assert len(errors) == 1, done.stderr


def _grid_config(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "grid",
                "store": STORE,
                "cache_dir": str(tmp_path / "cache-{node_id}"),
                "feature_set": {
                    "backbone": ["mobilenetv2", "nasnetmobile"],
                    "frames": [5, 10],
                    "sampling": "even",
                    "grid": True,
                },
                "split": {"kind": "stratified", "k": 3},
                "space": {
                    "lstm_units": [8],
                    "dense_layers": 1,
                    "dense_units_1": [8],
                    "batch_size": [8],
                },
                "budget": {"trials": 2, "max_concurrent": 2, "max_epochs": 2, "patience": 2},
                "resources": {"cpu": 1, "intra_op_threads": 1},
                "storage": {"storage_path": str(tmp_path / "runs")},
            }
        )
    )
    return path

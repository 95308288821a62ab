"""A real 2-node Ray cluster on loopback (two raylets) runs a study whose feature set sits in an
S3 bucket on a real HTTP endpoint: trials run on both nodes and each node downloads the feature
set once, into its own cache."""

from __future__ import annotations

import boto3
import pytest
import ray
from ray.cluster_utils import Cluster

from hpo.search import from_dict, run_study
from pipeline.store import open_store
from tests.support.featuresets import synthetic_feature_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def two_node_cluster(s3_endpoint):
    """Head + one worker, one CPU each; started after the S3 endpoint so that both raylets (and
    so every worker) inherit its AWS_* environment."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def test_study_runs_on_both_nodes_and_each_node_downloads_once(
    tmp_path, s3_endpoint, two_node_cluster
):
    boto3.client("s3").create_bucket(Bucket="lushpo-features")
    store_uri = "s3://lushpo-features/store"
    key = open_store(store_uri, cache_dir=tmp_path / "writer-cache").put(
        synthetic_feature_set(clips=24, frames=4, dim=8)
    )
    gets_before = s3_endpoint.count("GET", "features.npy")
    assert gets_before == 0

    cfg = from_dict(
        {
            "name": "two-nodes",
            "store": store_uri,
            "address": two_node_cluster.address,
            "cache_dir": str(tmp_path / "cache-{node_id}"),
            "feature_set": {"backbone": "synthetic", "frames": 4},
            "split": {"kind": "stratified", "k": 3},
            "space": {
                "lstm_units": [8],
                "dense_layers": 1,
                "dense_units_1": [8],
                "batch_size": [8, 16],
            },
            "budget": {"trials": 4, "max_concurrent": 2, "max_epochs": 2, "patience": 2},
            "resources": {"cpu": 1, "intra_op_threads": 1},
            "storage": {"storage_path": str(tmp_path / "runs")},
        },
        source="test",
    )
    result = run_study(cfg)

    assert len(result.trials) == 4 and all(t.error is None for t in result.trials)
    # each node's cache holds the feature set; the endpoint served features.npy once per node
    caches = sorted(p for p in tmp_path.glob("cache-*") if (p / "featuresets" / key).is_dir())
    assert len(caches) == 2, caches
    assert s3_endpoint.count("GET", "features.npy") == 2
    # trials ran on both nodes (each trial reports the node it ran on)
    missing = [t.trial_id for t in result.trials if "node_id" not in t.metrics]
    assert not missing, f"trials {missing} did not report node_id (hpo.train must)"
    ran_on = {t.metrics["node_id"] for t in result.trials}
    assert ran_on == {p.name[len("cache-") :] for p in caches}

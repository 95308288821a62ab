"""Shared fixtures: ../shared data (fail loudly in CI when missing), a real S3 endpoint,
synthetic clips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.s3 import S3Endpoint

REQUIRE_SHARED = bool(os.environ.get("LUSHPO_REQUIRE_SHARED") or os.environ.get("CI"))


def _shared_path(env: str, default: Path) -> Path:
    path = Path(os.environ.get(env, default))
    if not path.exists():
        message = f"{env}={path} does not exist; point {env} at ../shared (see README)"
        if REQUIRE_SHARED:
            pytest.fail(message)
        pytest.skip(message)
    return path


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The read-only ../shared/data folder (clips under pocus/convex, paper files under paper)."""
    return _shared_path("LUSHPO_DATA_DIR", REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def xception_weights() -> Path:
    return _shared_path(
        "LUSHPO_WEIGHTS", REPO.parent / "shared" / "weights" / "xception_imagenet_notop.h5"
    )


@pytest.fixture(scope="session")
def k8s_crds_dir() -> Path:
    return _shared_path("LUSHPO_K8S_CRDS", REPO.parent / "shared" / "k8s-crds")


@pytest.fixture
def s3_endpoint(monkeypatch):
    """moto in server mode on loopback (real HTTP); AWS_* set so boto3 and pyarrow reach it."""
    endpoint = S3Endpoint().start()
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    yield endpoint
    endpoint.stop()

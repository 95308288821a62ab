"""Dockerfiles, .dockerignore, compose.yaml and the k8s copies of the study config, checked
statically (no Docker engine here): hadolint, versions against requirements.lock, build context."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.deploy_tests.conftest import find_tool, lock_versions

DOCKERFILES = {"cpu": REPO / "deploy" / "Dockerfile.cpu", "gpu": REPO / "deploy" / "Dockerfile.gpu"}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _lock_python() -> str:
    header = (REPO / "requirements.lock").read_text().splitlines()[1]
    match = re.search(r"--python-version (\d+)\.(\d+)", header)
    assert match, f"no --python-version in the lock header: {header}"
    return f"py{match.group(1)}{match.group(2)}"


def test_hadolint_reports_nothing():
    result = subprocess.run(
        [find_tool("hadolint"), *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_image_pins_match_the_lock(variant):
    lock = lock_versions()
    steps = _instructions(DOCKERFILES[variant])
    suffix = "-gpu" if variant == "gpu" else ""
    # The base is a build argument whose default is the official tag of the locked versions.
    assert [args for word, args in steps if word == "FROM"] == ["${BASE_IMAGE}"]
    assert next(args for word, args in steps if word == "ARG") == (
        f"BASE_IMAGE=rayproject/ray:{lock['ray']}-{_lock_python()}{suffix}"
    )
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "pip install --no-cache-dir --no-deps -r requirements.lock" in runs
    assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in runs
    # Every package pinned in a RUN line is pinned at the lock's version.
    pins = re.findall(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s\"']+)", runs)
    for name, version in pins:
        assert lock[name.lower()] == version, f"{variant}: {name}=={version} but lock has {lock}"
    if variant == "gpu":
        assert ("tensorflow", lock["tensorflow"]) in pins
        assert '-c requirements.lock "tensorflow[and-cuda]==' in runs


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_image_runs_as_numeric_non_root(variant):
    users = [args for word, args in _instructions(DOCKERFILES[variant]) if word == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users


def _dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_copied_files_exist_and_are_in_the_build_context(variant):
    for word, args in _instructions(DOCKERFILES[variant]):
        if word != "COPY":
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"{variant}: COPY {source}: no such file"
            assert not _dockerignore_excludes(source), f"{variant}: .dockerignore drops {source}"


def test_dockerignore_keeps_the_context_small():
    for path in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "runs/x", "k8s/README.md"):
        assert _dockerignore_excludes(path), path
    assert _dockerignore_excludes("hpo/__pycache__/cli.cpython-311.pyc")
    assert not _dockerignore_excludes("hpo/cli/_main.py")


def test_compose_has_head_two_workers_and_minio():
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"ray-head", "ray-worker-1", "ray-worker-2", "minio", "create-bucket"} <= set(services)
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version
    for name in ("ray-head", "ray-worker-1", "ray-worker-2", "create-bucket"):
        service = services[name]
        assert service["image"] == f"lushpo:{version.group(1)}-cpu"
        assert service["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
        assert service["user"] == "1000:100" and service["cap_drop"] == ["ALL"]
    for name in ("ray-head", "ray-worker-1", "ray-worker-2"):
        # token auth from the environment: a read-only root has no ~/.ray to write one to
        assert services[name]["environment"]["RAY_AUTH_MODE"] == "token"
        assert "RAY_AUTH_TOKEN" in services[name]["environment"]
    for name in ("ray-worker-1", "ray-worker-2"):
        assert "--address=ray-head:6379" in services[name]["command"]
    assert "--head" in services["ray-head"]["command"]
    assert services["ray-head"]["depends_on"]["create-bucket"]["condition"] == (
        "service_completed_successfully"
    )
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port} is published beyond localhost"
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"SECRET|PASSWORD|ACCESS_KEY|ROOT_USER|TOKEN", key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{key} has a literal value"


def test_k8s_study_config_is_the_paper_config():
    """kustomize cannot read ../configs, so k8s/base keeps a copy (`make k8s-sync-config`)."""
    paper = (REPO / "configs" / "paper-xception-20.yaml").read_text()
    paper = paper.replace("$schema=lushpo.schema.json", "$schema=../../configs/lushpo.schema.json")
    assert (REPO / "k8s" / "base" / "study.yaml").read_text() == paper, (
        "k8s/base/study.yaml differs from configs/paper-xception-20.yaml: run make k8s-sync-config"
    )


def test_gpu_study_config_differs_only_in_resources_and_concurrency():
    paper = yaml.safe_load((REPO / "configs" / "paper-xception-20.yaml").read_text())
    gpu = yaml.safe_load((REPO / "k8s" / "overlays" / "gpu" / "study.yaml").read_text())
    assert gpu["resources"]["gpu"] > 0
    for config in (paper, gpu):
        config.pop("resources")
        config["budget"].pop("max_concurrent")
    assert gpu == paper

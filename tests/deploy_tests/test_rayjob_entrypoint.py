"""The rendered RayJob runs commands the real CLI accepts, with the env and config the pods get.

The entrypoint is parsed the way it is executed: KubeRay's submitter shell sees it first (it must
be a single `bash -c '<script>'`), then the head's bash runs the script, whose one command,
`lushpo run`, is expanded with the head container's environment (ConfigMap + Secret references)
and handed to `hpo.cli._main.build_parser()`; `hpo.cli._commands.run.pipeline_steps` then gives
the verbs it calls, each parsed by the real parser; the study config goes through `hpo.search`."""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpo.cli._commands.run import pipeline_steps
from hpo.cli._commands.tune import config_from_args
from hpo.cli._main import build_parser
from hpo.search import load_config
from tests.conftest import REPO
from tests.deploy_tests.conftest import OVERLAYS, find, lock_versions

STEPS = ["data", "data", "features", "tune", "export", "evaluate"]
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _secret_examples() -> dict[tuple[str, str], str]:
    values = {}
    for doc in yaml.safe_load_all((REPO / "k8s" / "secret.example.yaml").read_text()):
        for key, value in doc["stringData"].items():
            values[(doc["metadata"]["name"], key)] = value
    return values


def _head(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]


def head_environment(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The head container's environment as Kubernetes builds it (Secrets from the example)."""
    return container_environment(docs, _head(docs)["containers"][0], _secret_examples())


def container_environment(
    docs: list[dict[str, Any]],
    container: dict[str, Any],
    secrets: dict[tuple[str, str], str],
    config: dict[str, str] | None = None,
) -> dict[str, str]:
    """A container's environment as Kubernetes builds it: its ConfigMaps (`config` replacing
    their values), then its own `env`, secretKeyRefs read from `secrets` ((name, key) -> value)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        env.update({k: v for k, v in (config or {}).items() if k in env})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            key = (ref["name"], ref["key"])
            assert key in secrets, f"secretKeyRef {key} is not in the test's Secrets"
            env[var["name"]] = secrets[key]
    return env


def entrypoint_commands(entrypoint: str, env: dict[str, str]) -> list[list[str]]:
    outer = shlex.split(entrypoint)  # the submitter's shell: one `bash -c SCRIPT`, nothing else
    assert len(outer) == 3 and outer[:2] == ["bash", "-c"], outer[:4]
    lexer = shlex.shlex(outer[2], posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token == "&&":
            commands.append([])
            continue
        assert not set(token) <= set("();<>|&"), f"unexpected shell operator {token!r}"

        def expand(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            assert name in env, f"entrypoint uses ${name}, which the head container does not set"
            return env[name]

        commands[-1].append(_VAR.sub(expand, token))
    return commands


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture
def steps(overlay, rendered, tmp_path):
    """{verb: (argv, parsed args)} of the steps the overlay's `lushpo run` takes (the first of
    each verb), the study file at a local path."""
    docs = rendered[overlay]
    env = head_environment(docs)
    study_path = _mounted_study(docs, tmp_path)
    commands = entrypoint_commands(find(docs, "RayJob")["spec"]["entrypoint"], env)
    assert [c[:2] for c in commands] == [["lushpo", "run"]], "one verb: lushpo run"
    parser = build_parser()
    argv = [study_path if arg == "/etc/lushpo/study.yaml" else arg for arg in commands[0][1:]]
    _, calls = pipeline_steps(_parse(parser, argv), environ=env)
    assert [argv[0] for _, argv in calls] == STEPS
    parsed = {}
    for _, call in calls:
        parsed.setdefault(call[0], (call, _parse(parser, call)))
    return docs, env, parsed


def _parse(parser, argv: list[str]):
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(argv)
    except SystemExit:
        command = f"lushpo {shlex.join(argv)}"
        pytest.fail(f"the RayJob runs `{command}`, which the CLI rejects: {errors.getvalue()}")


def _mounted_study(docs: list[dict[str, Any]], tmp_path: Path) -> str:
    """The study ConfigMap as the head sees it at /etc/lushpo/study.yaml, written to tmp_path."""
    head = _head(docs)
    volumes = {v["name"]: v for v in head["volumes"]}
    mounts = {m["mountPath"]: m for m in head["containers"][0]["volumeMounts"]}
    volume = volumes[mounts["/etc/lushpo"]["name"]]
    data = find(docs, "ConfigMap", volume["configMap"]["name"])["data"]
    path = tmp_path / "study.yaml"
    path.write_text(data["study.yaml"])
    return str(path)


def test_entrypoint_steps_parse_and_agree(steps):
    _, env, parsed = steps
    data = parsed["data"][1]  # the PVC starts empty: the first attempt fetches
    assert data.action == "fetch" and Path(data.data_dir) == Path(env["LUSHPO_DATA_DIR"])

    tune_args = parsed["tune"][1]
    assert tune_args.resume and not tune_args.overwrite
    cfg = config_from_args(tune_args, environ=env)
    assert cfg.name == env["LUSHPO_STUDY"]
    assert cfg.storage.storage_path == env["LUSHPO_STORAGE_PATH"]
    assert cfg.storage.optuna_storage == env["LUSHPO_OPTUNA_STORAGE"]
    assert cfg.storage.endpoint_url == env["AWS_ENDPOINT_URL"]
    assert cfg.store == env["LUSHPO_STORE"]

    features = parsed["features"][1]
    # The one features step extracts every (backbone, frames) pair the study reads, as Ray
    # work on the cluster the job runs in (the head has no CPUs: actors go to the workers).
    pairs = set(itertools.product(cfg.feature_set.backbone, cfg.feature_set.frames))
    assert set(itertools.product(features.backbone, features.frames)) == pairs
    assert features.sampling == cfg.feature_set.sampling
    assert features.store == cfg.store
    assert features.address == "auto"

    export = parsed["export"][1]
    assert export.run == cfg.run_path
    assert Path(parsed["evaluate"][1].directory) == Path(export.out)
    assert Path(export.out).is_relative_to(env["LUSHPO_RESULTS_DIR"])


def test_study_configmap_loads(overlay, rendered, tmp_path):
    docs = rendered[overlay]
    data_dir = head_environment(docs)["LUSHPO_DATA_DIR"]  # what `lushpo tune` passes from env
    cfg = load_config(_mounted_study(docs, tmp_path), defaults={"split.data_dir": data_dir})
    worker = find(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    # One trial must fit on one worker, or Tune waits forever for resources.
    assert cfg.resources.cpu <= float(limits["cpu"])
    assert cfg.resources.gpu <= float(limits.get("nvidia.com/gpu", 0))
    if overlay == "gpu":
        assert cfg.resources.gpu > 0


def test_paths_the_steps_write_are_writable(steps):
    """Everything the entrypoint writes lives on a mounted volume (the root fs is read-only)."""
    docs, env, parsed = steps
    head = _head(docs)["containers"][0]
    assert head["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = [Path(m["mountPath"]) for m in head["volumeMounts"] if not m.get("readOnly")]
    written = [
        parsed["data"][1].data_dir,
        parsed["export"][1].out,
        env["LUSHPO_CACHE_DIR"],
        env["KERAS_HOME"],
        env["MPLCONFIGDIR"],
    ]
    for path in written:
        assert any(Path(path).is_relative_to(m) for m in mounts), f"{path} is not on a volume"


def test_images_and_ray_version_match_project(overlay, rendered):
    docs = rendered[overlay]
    version = _project_version()
    rayjob = find(docs, "RayJob")
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == lock_versions()["ray"]
    images = {
        c["image"]
        for spec in _pod_specs(rayjob)
        for c in spec["containers"]
        if c["name"].startswith("ray-")
    }
    assert images == {f"lushpo:{version}-{overlay}"}


def test_optuna_storage_driver_is_locked():
    """The Optuna URL the RayJob gets names psycopg2; the images install only the lock."""
    url = _secret_examples()[("lushpo-optuna", "url")]
    assert url.startswith("postgresql+psycopg2://")
    assert "psycopg2-binary" in lock_versions(), (
        "requirements.lock lacks psycopg2-binary (pyproject lists it): run `make lock`"
    )


def _pod_specs(node: Any):
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node
        for child in node.values():
            yield from _pod_specs(child)
    elif isinstance(node, list):
        for child in node:
            yield from _pod_specs(child)


def _project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


def test_token_authentication_on(overlay, rendered):
    """KubeRay turns Ray's token auth on from a Secret; the submitter reads the same Secret."""
    rayjob = find(rendered[overlay], "RayJob")["spec"]
    auth = rayjob["rayClusterSpec"]["authOptions"]
    assert auth == {"mode": "token", "secretName": "lushpo-ray-token"}
    assert ("lushpo-ray-token", "auth_token") in _secret_examples()
    submitter = rayjob["submitterPodTemplate"]["spec"]["containers"][0]
    env = {v["name"]: v for v in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("lushpo-ray-token", "auth_token")
    head = rayjob["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0"

"""deploy/k8s_validate.py passes the rendered overlays and rejects broken manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.deploy_tests.conftest import OVERLAYS, find, find_tool


def _problems(validator, crd_schemas, docs):
    return [str(p) for p in validator.validate_documents(docs, "test.yaml", crd_schemas)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_passes(overlay, rendered, validator, crd_schemas):
    docs = rendered[overlay]
    assert {d["kind"] for d in docs} >= {"RayJob", "ConfigMap", "StatefulSet", "Service"}
    assert _problems(validator, crd_schemas, docs) == []


def test_misspelled_rayjob_field_fails(rendered, validator, crd_schemas):
    docs = rendered["cpu"]
    rayjob = find(docs, "RayJob")
    rayjob["spec"]["backofLimit"] = rayjob["spec"].pop("backoffLimit")
    problems = _problems(validator, crd_schemas, docs)
    assert any("RayJob/lushpo-study" in p and "'backofLimit' was unexpected" in p for p in problems)


def test_misspelled_field_deep_in_pod_template_fails(rendered, validator, crd_schemas):
    docs = rendered["gpu"]
    group = find(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["template"]["spec"]["tolerations"][0]["efect"] = "NoSchedule"
    problems = _problems(validator, crd_schemas, docs)
    assert any(
        "workerGroupSpecs[0].template.spec.tolerations[0]" in p and "'efect'" in p for p in problems
    ), problems


def test_wrong_type_in_rayjob_fails(rendered, validator, crd_schemas):
    docs = rendered["cpu"]
    find(docs, "RayJob")["spec"]["shutdownAfterJobFinishes"] = "yes"
    problems = _problems(validator, crd_schemas, docs)
    expected = "spec.shutdownAfterJobFinishes: 'yes' is not of type 'boolean'"
    assert any(expected in p for p in problems), problems


def test_container_without_limits_fails(rendered, validator, crd_schemas):
    docs = rendered["cpu"]
    worker = find(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    del worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    problems = _problems(validator, crd_schemas, docs)
    assert any("(ray-worker): resources.limits.cpu is missing" in p for p in problems), problems
    assert any("(ray-worker): resources.limits.memory is missing" in p for p in problems)


def test_builtin_container_without_limits_fails(rendered, validator, crd_schemas):
    docs = rendered["cpu"]
    postgres = find(docs, "StatefulSet", "lushpo-postgres")
    del postgres["spec"]["template"]["spec"]["containers"][0]["resources"]
    problems = _problems(validator, crd_schemas, docs)
    assert any(
        "StatefulSet/lushpo-postgres" in p and "resources.requests.cpu is missing" in p
        for p in problems
    )


def test_gpu_request_without_limit_fails(rendered, validator, crd_schemas):
    docs = rendered["gpu"]
    worker = find(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    del worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert any("nvidia.com/gpu" in p for p in _problems(validator, crd_schemas, docs))


def test_secret_in_configmap_fails(rendered, validator, crd_schemas):
    docs = rendered["cpu"]
    find(docs, "ConfigMap", "lushpo-env")["data"]["AWS_SECRET_ACCESS_KEY"] = "wJalrXUtnFEMI"
    problems = _problems(validator, crd_schemas, docs)
    assert any("data.AWS_SECRET_ACCESS_KEY: secret-looking key" in p for p in problems)


def test_password_in_configmap_url_fails(rendered, validator, crd_schemas):
    docs = rendered["cpu"]
    find(docs, "ConfigMap", "lushpo-env")["data"]["LUSHPO_OPTUNA_STORAGE"] = (
        "postgresql+psycopg2://optuna:hunter2@lushpo-postgres:5432/optuna"
    )
    problems = _problems(validator, crd_schemas, docs)
    expected = "data.LUSHPO_OPTUNA_STORAGE: the value looks like a credential"
    assert any(expected in p for p in problems), problems


def test_literal_secret_env_value_fails(rendered, validator, crd_schemas):
    docs = rendered["cpu"]
    head = find(docs, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]
    env = head["template"]["spec"]["containers"][0]["env"]
    env[0] = {"name": "AWS_ACCESS_KEY_ID", "value": "AKIAIOSFODNN7EXAMPLE"}
    problems = _problems(validator, crd_schemas, docs)
    assert any("AWS_ACCESS_KEY_ID" in p and "secretKeyRef" in p for p in problems)


def test_rendered_secret_and_exposed_dashboard_fail(rendered, validator, crd_schemas):
    docs = rendered["cpu"]
    docs += yaml.safe_load_all((REPO / "k8s" / "secret.example.yaml").read_text())
    find(docs, "Service", "lushpo-minio")["spec"]["type"] = "NodePort"
    head = find(docs, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]
    head["serviceType"] = "LoadBalancer"
    problems = _problems(validator, crd_schemas, docs)
    assert any("Secret/lushpo-s3" in p and "created by hand" in p for p in problems)
    assert any("spec.type must be ClusterIP, got NodePort" in p for p in problems)
    assert any("headGroupSpec.serviceType must be ClusterIP" in p for p in problems)


def test_insecure_container_fails(rendered, validator, crd_schemas):
    docs = rendered["cpu"]
    spec = find(docs, "RayJob")["spec"]
    context = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    context["securityContext"] = {"privileged": True}
    del spec["rayClusterSpec"]["autoscalerOptions"]["securityContext"]
    problems = _problems(validator, crd_schemas, docs)
    for rule in ("allowPrivilegeEscalation must be false", "drop must include ALL", "privileged"):
        assert any("(ray-head)" in p and rule in p for p in problems), rule
    assert any("autoscalerOptions: securityContext.runAsNonRoot" in p for p in problems)


def test_rayjob_without_retries_fails(rendered, validator, crd_schemas):
    docs = rendered["cpu"]
    spec = find(docs, "RayJob")["spec"]
    spec["backoffLimit"] = 0
    spec["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 9
    problems = _problems(validator, crd_schemas, docs)
    assert any("spec.backoffLimit must be > 0" in p for p in problems)
    assert any("minReplicas <= replicas <= maxReplicas, got 1 <= 9 <= 2" in p for p in problems)


def test_builtin_kind_unknown_field_fails(rendered, validator, crd_schemas):
    docs = rendered["cpu"]
    find(docs, "Service", "lushpo-postgres")["spec"]["clusterIp"] = "None"
    problems = _problems(validator, crd_schemas, docs)
    assert any(
        "Service/lushpo-postgres" in p and "'clusterIp' was unexpected" in p for p in problems
    ), problems


def test_close_schema_only_closes_listed_objects(validator):
    schema = {
        "type": "object",
        "properties": {
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "free": {"type": "object"},
            "list": {"type": "array", "items": {"type": "object", "properties": {"a": {}}}},
        },
    }
    closed = validator.close_schema(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["list"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["open"]
    assert "additionalProperties" not in closed["properties"]["free"]
    assert "additionalProperties" not in schema  # the input is left alone


def test_cli_exit_codes(rendered, rendered_text, k8s_crds_dir, tmp_path):
    """The command `make k8s-validate` runs: 0 on the overlays, 1 (naming the field) when broken."""
    good = tmp_path / "cpu.yaml"
    good.write_text(rendered_text["cpu"])
    docs = rendered["cpu"]
    find(docs, "RayJob")["spec"]["rayClusterSpec"]["enableInTreeAutoscalling"] = True
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    script = str(REPO / "deploy" / "k8s_validate.py")
    command = [sys.executable, script, "--crds", str(k8s_crds_dir)]
    ok = subprocess.run([*command, str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 problems" in ok.stdout
    broken = subprocess.run([*command, str(bad)], capture_output=True, text=True, check=False)
    assert broken.returncode == 1
    assert "spec.rayClusterSpec: Additional properties are not allowed" in broken.stdout
    assert "'enableInTreeAutoscalling' was unexpected" in broken.stdout
    no_crds = subprocess.run(
        [*command[:2], "--crds", str(tmp_path), str(good)], capture_output=True, text=True
    )
    assert no_crds.returncode == 2, no_crds.stdout
    assert f"no CustomResourceDefinition in the *.yaml files of {tmp_path}" in no_crds.stderr


@pytest.mark.slow  # checkov takes 10-30 s to start on a busy 2-core machine
def test_checkov_passes_overlays_and_fails_a_weak_manifest(rendered_text, tmp_path):
    """One checkov run over both overlays and a deliberately weak Deployment: only the weak one
    fails, so the scan (with deploy/checkov.yaml's skips) is clean and still bites."""
    checkov = find_tool("checkov")
    files = []
    for overlay, text in rendered_text.items():
        (tmp_path / f"{overlay}.yaml").write_text(text)
        files += ["-f", f"{overlay}.yaml"]
    container = {"name": "c", "image": "busybox:1.37", "securityContext": {}}
    weak = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "weak", "namespace": "lushpo"},
        "spec": {
            "selector": {"matchLabels": {"app": "weak"}},
            "template": {
                "metadata": {"labels": {"app": "weak"}},
                "spec": {"containers": [container]},
            },
        },
    }
    (tmp_path / "weak.yaml").write_text(yaml.safe_dump(weak))
    config = ["--config-file", str(REPO / "deploy" / "checkov.yaml"), "-o", "json"]
    result = subprocess.run(
        [checkov, *config, *files, "-f", "weak.yaml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(result.stdout)
    failed = report["results"]["failed_checks"]
    assert {Path(f["file_path"]).name for f in failed} == {"weak.yaml"}, [
        (f["file_path"], f["check_id"]) for f in failed if "weak" not in f["file_path"]
    ]
    expected = {"CKV_K8S_11", "CKV_K8S_13", "CKV_K8S_20", "CKV_K8S_28"}  # limits, privileges
    assert expected <= {f["check_id"] for f in failed}
    assert report["summary"]["parsing_errors"] == 0


def test_fetch_pod_passes_and_mounts_the_work_volume(rendered, validator, crd_schemas):
    docs = list(yaml.safe_load_all((REPO / "k8s" / "fetch-pod.yaml").read_text()))
    assert _problems(validator, crd_schemas, docs) == []
    pod = docs[0]["spec"]
    head = find(rendered["cpu"], "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    head_volumes = {v["name"]: v for v in head["spec"]["volumes"]}
    head_mounts = {m["mountPath"]: m["name"] for m in head["spec"]["containers"][0]["volumeMounts"]}
    claim = head_volumes[head_mounts["/var/lib/lushpo"]]["persistentVolumeClaim"]["claimName"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/var/lib/lushpo"

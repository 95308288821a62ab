"""Offline validation of rendered lushpo manifests (`make k8s-validate`).

Three checks, each naming the file, the object and the field it rejects:

1. Built-in kinds against the Kubernetes OpenAPI schemas shipped by `kubernetes-validate`
   (strict: unknown fields are errors).
2. Custom resources (RayJob, RayCluster) against the `openAPIV3Schema` of their CRDs in a folder
   (../shared/k8s-crds, or the same files from the pinned KubeRay release). CRD schemas rarely set
   `additionalProperties`, so an API server would silently *prune* a misspelled field such as
   `backofLimit`; here every object schema that lists `properties` and does not set
   `x-kubernetes-preserve-unknown-fields` is closed, so the misspelling is an error instead.
   CEL rules (`x-kubernetes-validations`) are not evaluated.
3. lushpo's policy: every container (including those inside RayJob/RayCluster pod templates and
   the autoscaler sidecar) has CPU and memory requests and limits and a restricted
   securityContext; no secret-looking key or value in a ConfigMap or a literal env value; no
   Secret, Ingress or externally reachable Service in the rendered output; RayJobs retry and
   clean up after themselves.

Usage: python deploy/k8s_validate.py [--crds DIR] [--kubernetes-version V]... FILE...
Exit status 0 when every document passes, 1 when any problem is found, 2 on bad input.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

__all__ = ["Problem", "load_crd_schemas", "policy_problems", "validate_documents"]

DEFAULT_KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
KUBERAY_RELEASE = "v1.7.0"
KUBERAY_CRD_URL = (
    f"https://raw.githubusercontent.com/ray-project/kuberay/{KUBERAY_RELEASE}/"
    "ray-operator/config/crd/bases/ray.io_{plural}.yaml"
)

SECRET_NAME = re.compile(
    r"(SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE[_-]?KEY|ACCESS[_-]?KEY|API[_-]?KEY|CREDENTIAL)",
    re.IGNORECASE,
)
SECRET_VALUE = re.compile(
    r"((?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"  # URL with user:password@
    r"|aws_secret_access_key\s*[=:])",
    re.IGNORECASE,
)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 2 MB of YAML
_REPO = Path(__file__).resolve().parents[1]
WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}


@dataclass(frozen=True)
class Problem:
    """One rejected field: where it is and why."""

    source: str
    obj: str  # Kind/name
    path: str  # dotted path inside the object, "" for the object itself
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.source}: {self.obj}: {where}{self.message}"


# --- CRD schemas ------------------------------------------------------------------------------


def close_schema(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which object schemas reject unknown fields.

    An object schema that lists `properties`, sets no `additionalProperties` and no
    `x-kubernetes-preserve-unknown-fields: true` gets `additionalProperties: false`."""
    schema = copy.deepcopy(schema)
    _close(schema)
    return schema


def _close(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _close(item)
        return
    if not isinstance(node, dict):
        return
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    for key in ("properties", "patternProperties"):
        for child in (node.get(key) or {}).values():
            _close(child)
    for key in ("items", "additionalProperties", "not"):
        _close(node.get(key))
    for key in ("allOf", "anyOf", "oneOf"):
        _close(node.get(key) or [])


def load_crd_schemas(crd_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """{(apiVersion, kind): closed schema} for every served version of every CRD in crd_dir."""
    crd_dir = Path(crd_dir)
    files = sorted(crd_dir.glob("*.yaml")) + sorted(crd_dir.glob("*.yml"))
    if not files:
        raise FileNotFoundError(
            f"no CRD files (*.yaml) in {crd_dir}; set LUSHPO_K8S_CRDS or --crds to a folder with "
            f"the KubeRay {KUBERAY_RELEASE} CRDs, e.g. {KUBERAY_CRD_URL.format(plural='rayjobs')}"
        )
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in files:
        for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                api_version = f"{spec['group']}/{version['name']}"
                raw = version["schema"]["openAPIV3Schema"]
                schemas[(api_version, spec["names"]["kind"])] = close_schema(raw)
    if not schemas:
        raise FileNotFoundError(f"no CustomResourceDefinition in the *.yaml files of {crd_dir}")
    return schemas


# --- schema validation ------------------------------------------------------------------------


def _dotted(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _object_name(doc: dict[str, Any]) -> str:
    name = (doc.get("metadata") or {}).get("name", "<no name>")
    return f"{doc.get('kind', '<no kind>')}/{name}"


def schema_problems(
    doc: dict[str, Any],
    source: str,
    crd_schemas: dict[tuple[str, str], dict[str, Any]],
    kubernetes_versions: tuple[str, ...] = DEFAULT_KUBERNETES_VERSIONS,
) -> list[Problem]:
    obj = _object_name(doc)
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key in crd_schemas:
        validator = jsonschema.Draft7Validator(crd_schemas[key])
        problems = [
            Problem(source, obj, _dotted(err.absolute_path), err.message)
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        ]
        name = (doc.get("metadata") or {}).get("name", "")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name or ""):
            problems.append(
                Problem(source, obj, "metadata.name", f"not a DNS-1123 label: {name!r}")
            )
        return problems
    group = key[0].split("/")[0] if "/" in key[0] else ""
    if "." in group and not group.endswith(".k8s.io"):
        return [
            Problem(
                source,
                obj,
                "apiVersion",
                f"custom resource {key[0]} {key[1]} has no CRD schema in the CRD folder",
            )
        ]
    problems = []
    for version in kubernetes_versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(Problem(source, obj, "apiVersion", exc.message))
        except kubernetes_validate.ValidationError as exc:
            problems.append(
                Problem(source, obj, _dotted(exc.path), f"{exc.message} (Kubernetes {version})")
            )
    return problems


# --- policy -----------------------------------------------------------------------------------


def _pod_specs(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec (a mapping with a `containers` list) anywhere inside node."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield path, node
        for key, child in node.items():
            yield from _pod_specs(child, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _pod_specs(child, f"{path}[{i}]")


def _resource_problems(resources: Any, where: str) -> list[str]:
    resources = resources or {}
    out = []
    for section in ("requests", "limits"):
        for name in ("cpu", "memory"):
            if (resources.get(section) or {}).get(name) in (None, ""):
                out.append(f"{where}: resources.{section}.{name} is missing")
    gpu_request = (resources.get("requests") or {}).get("nvidia.com/gpu")
    gpu_limit = (resources.get("limits") or {}).get("nvidia.com/gpu")
    if gpu_request is not None and str(gpu_request) != str(gpu_limit):
        out.append(f"{where}: nvidia.com/gpu must be set in limits (equal to its request)")
    return out


def _security_problems(
    context: Any, pod_context: dict[str, Any], where: str, *, pod_level: bool = True
) -> list[str]:
    context = context or {}
    out = []
    if context.get("allowPrivilegeEscalation") is not False:
        out.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
    if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
        out.append(f"{where}: securityContext.capabilities.drop must include ALL")
    if context.get("privileged"):
        out.append(f"{where}: securityContext.privileged must not be true")
    non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot") if pod_level else None)
    if non_root is not True:
        out.append(f"{where}: securityContext.runAsNonRoot must be true (container or pod)")
    return out


def _env_problems(env: Any, where: str) -> list[str]:
    out = []
    for i, var in enumerate(env or []):
        value = var.get("value")
        if value is None:
            continue
        if SECRET_NAME.search(var.get("name", "")) and not var["name"].endswith("_FILE"):
            out.append(
                f"{where}.env[{i}] ({var['name']}): a secret-looking variable has a literal "
                "value; use valueFrom.secretKeyRef"
            )
        elif SECRET_VALUE.search(str(value)):
            out.append(f"{where}.env[{i}] ({var.get('name')}): the value looks like a credential")
    return out


def _cluster_spec_problems(spec: dict[str, Any], where: str) -> list[str]:
    out = []
    head = spec.get("headGroupSpec") or {}
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        out.append(f"{where}.headGroupSpec.serviceType must be ClusterIP (dashboard stays inside)")
    if head.get("enableIngress"):
        out.append(f"{where}.headGroupSpec.enableIngress must not be true")
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        low, high = group.get("minReplicas", 0), group.get("maxReplicas")
        replicas = group.get("replicas", low)
        if high is None or not low <= replicas <= high:
            out.append(
                f"{where}.workerGroupSpecs[{i}]: need minReplicas <= replicas <= maxReplicas, "
                f"got {low} <= {replicas} <= {high}"
            )
    if spec.get("enableInTreeAutoscaling"):
        options = spec.get("autoscalerOptions") or {}
        at = f"{where}.autoscalerOptions"
        out += _resource_problems(options.get("resources"), at)
        out += _security_problems(options.get("securityContext"), {}, at, pod_level=False)
    return out


def policy_problems(doc: dict[str, Any], source: str) -> list[Problem]:
    """lushpo's deployment rules for one rendered object (see the module docstring)."""
    obj, kind, spec = _object_name(doc), doc.get("kind"), doc.get("spec") or {}
    found: list[str] = []
    if kind == "Secret":
        found.append(
            "Secrets are created by hand (k8s/secret.example.yaml), never rendered from the repo"
        )
    if kind == "Ingress":
        found.append("no Ingress: the Ray dashboard and services stay inside the cluster")
    if kind == "Service":
        if spec.get("type", "ClusterIP") != "ClusterIP":
            found.append(f"spec.type must be ClusterIP, got {spec.get('type')}")
        if spec.get("externalIPs"):
            found.append("spec.externalIPs must be empty")
    if kind == "ConfigMap":
        for key, value in (doc.get("data") or {}).items():
            if SECRET_NAME.search(key):
                found.append(f"data.{key}: secret-looking key in a ConfigMap; use a Secret")
            elif SECRET_VALUE.search(str(value)):
                found.append(f"data.{key}: the value looks like a credential; use a Secret")
    if kind == "RayJob":
        if not (spec.get("backoffLimit") or 0) > 0:
            found.append("spec.backoffLimit must be > 0 so a failed job resumes on a new cluster")
        if spec.get("shutdownAfterJobFinishes") is not True:
            found.append("spec.shutdownAfterJobFinishes must be true")
        if not (spec.get("ttlSecondsAfterFinished") or 0) > 0:
            found.append("spec.ttlSecondsAfterFinished must be > 0")
        found += _cluster_spec_problems(spec.get("rayClusterSpec") or {}, "spec.rayClusterSpec")
    if kind == "RayCluster":
        found += _cluster_spec_problems(spec, "spec")
    for path, pod in _pod_specs(doc, ""):
        pod_context = pod.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(flag):
                found.append(f"{path}.{flag} must not be true")
        for i, volume in enumerate(pod.get("volumes") or []):
            if "hostPath" in volume:
                found.append(f"{path}.volumes[{i}]: hostPath volumes are not allowed")
        for section in ("initContainers", "containers"):
            for i, container in enumerate(pod.get(section) or []):
                where = f"{path}.{section}[{i}] ({container.get('name')})"
                found += _resource_problems(container.get("resources"), where)
                found += _security_problems(container.get("securityContext"), pod_context, where)
                found += _env_problems(container.get("env"), where)
                for port in container.get("ports") or []:
                    if port.get("hostPort"):
                        found.append(f"{where}: hostPort {port['hostPort']} is not allowed")
    pod_kinds = WORKLOAD_KINDS | {"RayJob", "RayCluster"}
    if kind in pod_kinds and not list(_pod_specs(doc, "")):
        found.append("no pod template with containers found")
    return [Problem(source, obj, "", message) for message in found]


# --- driver -----------------------------------------------------------------------------------


def validate_documents(
    docs: list[dict[str, Any]],
    source: str,
    crd_schemas: dict[tuple[str, str], dict[str, Any]],
    kubernetes_versions: tuple[str, ...] = DEFAULT_KUBERNETES_VERSIONS,
) -> list[Problem]:
    """Every problem in a list of rendered objects (schema, then policy)."""
    problems: list[Problem] = []
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            problems.append(Problem(source, "<document>", "", "not a Kubernetes object"))
            continue
        problems += schema_problems(doc, source, crd_schemas, kubernetes_versions)
        problems += policy_problems(doc, source)
    return problems


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="k8s_validate", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="rendered YAML")
    parser.add_argument(
        "--crds",
        type=Path,
        default=Path(os.environ.get("LUSHPO_K8S_CRDS", _REPO.parent / "shared" / "k8s-crds")),
        help="folder of KubeRay CRD YAML files (default: $LUSHPO_K8S_CRDS or ../shared/k8s-crds)",
    )
    parser.add_argument(
        "--kubernetes-version",
        action="append",
        dest="versions",
        metavar="V",
        help=f"validate built-in kinds against these versions (default: "
        f"{', '.join(DEFAULT_KUBERNETES_VERSIONS)})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        crd_schemas = load_crd_schemas(args.crds)
    except FileNotFoundError as exc:
        print(f"k8s_validate: {exc}", file=sys.stderr)
        return 2
    versions = tuple(args.versions or DEFAULT_KUBERNETES_VERSIONS)
    problems: list[Problem] = []
    count = 0
    for path in args.files:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as exc:
            print(f"k8s_validate: {path}: {exc}", file=sys.stderr)
            return 2
        if not docs:
            problems.append(Problem(str(path), "<file>", "", "no Kubernetes objects"))
        count += len(docs)
        problems += validate_documents(docs, str(path), crd_schemas, versions)
    for problem in problems:
        print(problem)
    print(
        f"k8s_validate: {count} objects in {len(args.files)} files, {len(problems)} problems "
        f"(Kubernetes {', '.join(versions)}; CRDs from {args.crds})"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

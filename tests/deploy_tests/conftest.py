"""Fixtures for deploy/ and k8s/: the rendered overlays, the validator module, tool lookup.

Tools (kubectl, hadolint, checkov) fail the test in CI (`CI` or `LUSHPO_REQUIRE_SHARED` set) and
skip it elsewhere, like the ../shared fixtures."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, REQUIRE_SHARED

OVERLAYS = ("cpu", "gpu")
TOOLS_VENV = Path(os.environ.get("LUSHPO_TOOLS_VENV", REPO / ".venv-tools"))


def find_tool(name: str) -> str:
    """Path of a command-line tool: the project venvs first, then PATH."""
    for candidate in (REPO / ".venv" / "bin" / name, TOOLS_VENV / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} not found (see k8s/README.md 'Checks' for how to install it)"
    if REQUIRE_SHARED:
        pytest.fail(message)
    pytest.skip(message)


def render(overlay: str) -> str:
    """`kubectl kustomize k8s/overlays/<overlay>` as text."""
    result = subprocess.run(
        [find_tool("kubectl"), "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"kustomize {overlay} failed: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def rendered_text() -> dict[str, str]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture
def rendered(rendered_text) -> dict[str, list[dict[str, Any]]]:
    """Fresh (mutable) parsed documents of each overlay."""
    return {
        overlay: [d for d in yaml.safe_load_all(text) if d]
        for overlay, text in rendered_text.items()
    }


@pytest.fixture(scope="session")
def validator() -> ModuleType:
    """deploy/k8s_validate.py as a module (deploy/ is scripts, not a package)."""
    path = REPO / "deploy" / "k8s_validate.py"
    spec = importlib.util.spec_from_file_location("k8s_validate", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def crd_schemas(validator, k8s_crds_dir):
    return validator.load_crd_schemas(k8s_crds_dir)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def lock_versions() -> dict[str, str]:
    """{normalised name: version} from requirements.lock."""
    versions = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            versions[name.strip().lower().replace("_", "-")] = version.strip()
    return versions

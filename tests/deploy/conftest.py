"""Renders the Kubernetes manifests once per session, and finds the deployment tools.

The tools (kubectl with its kustomize, kubernetes-validate, checkov) live in a venv of their own,
installed by `make deploy-tools` (a prerequisite of `make test`) from k8s/requirements-tools.txt.
A missing tool fails the tests with that command: they never skip.
"""

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".venv" / "deploy-tools" / "bin"

# What the tests render: both overlays, and production with every opt-in component.
TARGETS = {
    "staging": ROOT / "k8s" / "overlays" / "staging",
    "production": ROOT / "k8s" / "overlays" / "production",
    "with-components": ROOT / "tests" / "deploy" / "with-components",
}
OVERLAYS = ("staging", "production")
SERVICES = ("scoring", "limits", "monitoring")
GRPC_PORTS = {"scoring": 50051, "limits": 50052, "monitoring": 50053}


def tool(name: str) -> Path:
    """The pinned tool from the deploy-tools venv; for kubectl, the one on PATH where the wheel
    does not exist (it is built for Linux only)."""
    pinned = TOOLS_BIN / name
    if pinned.exists():
        return pinned
    if name == "kubectl" and (on_path := shutil.which("kubectl")):
        return Path(on_path)
    pytest.fail(f"{name} is missing: `make deploy-tools` installs it into {TOOLS_BIN}")


@dataclass
class Rendered:
    """One target rendered by `kubectl kustomize`: the text, its path and its objects."""

    name: str
    text: str
    path: Path
    docs: list[dict] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: {len(found)} {kind} named {name}"
        return found[0]

    def deployment(self, service: str) -> dict:
        return self.get("Deployment", service)

    def container(self, service: str) -> dict:
        (container,) = [
            c
            for c in self.deployment(service)["spec"]["template"]["spec"]["containers"]
            if c["name"] == service
        ]
        return container

    def env(self, service: str) -> dict[str, dict]:
        """The container's env entries by name (each the whole entry, value or valueFrom)."""
        return {entry["name"]: entry for entry in self.container(service).get("env", [])}

    @property
    def namespace(self) -> str:
        (namespace,) = self.of_kind("Namespace")
        return namespace["metadata"]["name"]


def render(name: str, directory: Path, out: Path) -> Rendered:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", directory], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    path = out / f"{name}.yaml"
    path.write_text(result.stdout)
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return Rendered(name, result.stdout, path, docs)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, Rendered]:
    out = tmp_path_factory.mktemp("rendered")
    return {name: render(name, directory, out) for name, directory in TARGETS.items()}


@pytest.fixture(params=list(TARGETS))
def target(request, rendered) -> Rendered:
    return rendered[request.param]


@pytest.fixture(params=OVERLAYS)
def overlay(request, rendered) -> Rendered:
    return rendered[request.param]

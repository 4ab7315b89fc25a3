"""The rendered manifests against the Kubernetes API schemas, and checkov over them and the
Dockerfile: one run of each tool per session, offline."""

import json
import os
import re
import subprocess

import pytest
import yaml

from tests.deploy.conftest import ROOT, TARGETS, tool

# The Kubernetes versions the manifests are written for, each checked against its own schemas:
# native gRPC probes (1.27), unhealthyPodEvictionPolicy (1.31 GA) and the rest are all there.
KUBERNETES_VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37")
# Kinds from CRDs, which kubernetes-validate has no schema for; tests check them structurally.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}

# Every check skipped, where it is skipped, and why (the reason is also written beside each skip).
SKIPPED_CHECKS = {
    # Deployments: overlays pin the image by version; a release adds the digest.
    "CKV_K8S_43",
    # limits and monitoring read their database URL from the environment, from a Secret.
    "CKV_K8S_35",
    # Dockerfile: no HEALTHCHECK, Kubernetes probes the health port natively.
    "CKV_DOCKER_2",
}


# No platform key, no mapping or guideline downloads (--skip-download), no PyPI version check.
OFFLINE_CHECKOV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_"))},
    "BC_SKIP_MAPPING": "TRUE",
    "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE",
}


@pytest.fixture(scope="module")
def rendered_files(rendered) -> list:
    return [rendered[name].path for name in TARGETS]


def test_every_document_validates_strictly_for_every_supported_kubernetes(rendered, rendered_files):
    expected = sum(
        1 for name in TARGETS for doc in rendered[name].docs if doc["kind"] not in CUSTOM_KINDS
    )
    runs = {
        version: subprocess.Popen(
            [tool("kubernetes-validate"), "--strict", "-k", f"{version}.0", *rendered_files],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for version in KUBERNETES_VERSIONS
    }
    for version, run in runs.items():
        output, _ = run.communicate(timeout=120)
        lines = output.splitlines()
        problems = [
            line
            for line in lines
            if not re.search(r" passed for resource ", line)
            and not re.search(rf"schema for kind ({'|'.join(CUSTOM_KINDS)}) ", line)
        ]
        assert run.returncode == 0 and not problems, f"Kubernetes {version}:\n{output}"
        passed = [
            line for line in lines if f"against version {version}" in line and "passed" in line
        ]
        assert len(passed) == expected, f"Kubernetes {version}: {len(passed)} of {expected}"


def declared_skips() -> dict[str, list[str]]:
    """Every skip written in the sources, by check id, with its reason."""
    skips: dict[str, list[str]] = {}
    for path in sorted((ROOT / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            annotations = ((doc or {}).get("metadata") or {}).get("annotations") or {}
            for key, value in annotations.items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    skips.setdefault(check, []).append(reason)
    for match in re.finditer(r"checkov:skip=(\w+):(.*)", (ROOT / "Dockerfile").read_text()):
        skips.setdefault(match[1], []).append(match[2])
    return skips


def test_checkov_finds_nothing_in_the_manifests_and_the_dockerfile(rendered_files, tmp_path):
    files = [argument for path in rendered_files for argument in ("-f", path)]
    result = subprocess.run(
        [
            tool("checkov"),
            *files,
            "-f",
            ROOT / "Dockerfile",
            "--framework",
            "kubernetes",
            "dockerfile",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=OFFLINE_CHECKOV,
    )
    assert result.stdout.lstrip().startswith(("{", "[")), result.stdout + result.stderr
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {report["check_type"] for report in reports} == {"kubernetes", "dockerfile"}
    failed, skipped = [], set()
    for report in reports:
        summary = report["summary"]
        assert summary["parsing_errors"] == 0 and summary["passed"] > 0, report["check_type"]
        failed += [
            f"{check['check_id']} {check['resource']}: {check['check_name']}"
            for check in report["results"]["failed_checks"]
        ]
        skipped |= {check["check_id"] for check in report["results"]["skipped_checks"]}
    assert not failed, "\n".join(failed)
    assert skipped == SKIPPED_CHECKS
    skips = declared_skips()
    assert set(skips) == SKIPPED_CHECKS
    for check, reasons in skips.items():
        assert all(len(reason.strip()) > 20 for reason in reasons), f"{check}: say why"

"""Checks of the project itself: proto lint and compatibility with the last release, generated
code and API reference up to date, Python lint and types."""

import filecmp
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RELEASED = ROOT / "protos" / "released"


def test_protos_pass_buf_lint():
    result = subprocess.run(
        [BIN / "buf", "lint"], cwd=ROOT / "protos", capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_protos_do_not_break_the_last_release():
    baseline = _last_release()
    result = _buf_breaking(ROOT / "protos", baseline)
    assert result.returncode == 0, (
        f"a breaking change against {baseline.name} (the protos as released); keep the old "
        f"field, message or RPC, or make a new package version:\n{result.stdout}{result.stderr}"
    )


def test_buf_breaking_catches_a_breaking_change(tmp_path):
    """The check above can fail: a copy of the protos with a renumbered field does."""
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos, ignore=shutil.ignore_patterns("released"))
    money = protos / "creditline" / "type" / "v1" / "money.proto"
    text = money.read_text()
    assert "int64 minor_units = 2;" in text
    money.write_text(text.replace("int64 minor_units = 2;", "int64 minor_units = 3;"))
    result = _buf_breaking(protos, _last_release())
    assert result.returncode != 0 and "minor_units" in result.stdout, result.stdout + result.stderr


def test_generated_code_matches_the_protos(tmp_path):
    subprocess.run(
        [sys.executable, ROOT / "scripts" / "gen_protos.py", "--out", tmp_path],
        check=True,
        capture_output=True,
    )
    fresh, committed = tmp_path / "creditline", ROOT / "creditline"
    stale = _differences(filecmp.dircmp(fresh, committed))
    assert not stale, f"generated code is stale, run `make gen`: {stale}"


def test_api_reference_matches_the_protos(tmp_path):
    fresh = tmp_path / "api.md"
    subprocess.run(
        [sys.executable, ROOT / "scripts" / "gen_api_docs.py", "--out", fresh],
        check=True,
        capture_output=True,
    )
    committed = ROOT / "docs" / "api.md"
    assert fresh.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8"), (
        "docs/api.md is stale, run `make gen`"
    )


def test_python_passes_ruff():
    result = subprocess.run(
        [BIN / "ruff", "check", "services", "tests", "bench", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_pass_mypy():
    # Configured in pyproject.toml ([tool.mypy]): services/ with the generated stubs.
    result = subprocess.run([BIN / "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _last_release() -> Path:
    """The buf image of the protos as last released (`make proto-baseline`)."""
    images = sorted(
        RELEASED.glob("v*.binpb"),
        key=lambda p: tuple(int(n) for n in p.name[1 : -len(".binpb")].split(".")),
    )
    assert images, f"no release baseline in {RELEASED}"
    return images[-1]


def _buf_breaking(protos: Path, against: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "buf", "breaking", "--against", against],
        cwd=protos,
        capture_output=True,
        text=True,
    )


# What serving never imports: training (the `train` extra), code generation and tests (`dev`).
NOT_IN_THE_RUNTIME = {
    "scikit-learn", "scipy", "matplotlib", "skl2onnx", "onnx", "optbinning", "threadpoolctl",
    "grpcio-tools", "mypy-protobuf", "grpcio-testing", "pytest", "hypothesis", "ruff", "buf-bin",
}  # fmt: skip


def read_lock(name: str) -> dict[str, str]:
    """The versions of a lock in requirements/, checking that each is pinned with hashes."""
    text = (ROOT / "requirements" / name).read_text()
    assert text.startswith("# Linux x86_64 (glibc), CPython 3.11"), "the lock names its platform"
    versions = {}
    for block in re.split(r"\n(?=\S)", text):
        if block.startswith("#"):
            continue
        match = re.match(r"([\w.-]+)(?:\[[\w,-]+\])?==(\S+) \\\n", block)
        assert match, f"{name}: not pinned: {block.splitlines()[0]}"
        assert "--hash=sha256:" in block, f"{name}: no hash for {match[1]}"
        versions[canonicalize_name(match[1])] = match[2]
    return versions


def test_the_locks_pin_the_declared_dependencies_on_the_same_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = read_lock("runtime.lock"), read_lock("dev.lock")
    assert runtime.items() <= dev.items(), "runtime.lock and dev.lock disagree: run `make lock`"
    extras = project["optional-dependencies"]
    for locked, requirements in (
        (runtime, project["dependencies"]),
        (dev, project["dependencies"] + extras["train"] + extras["dev"]),
    ):
        for requirement in map(Requirement, requirements):
            if requirement.name == project["name"]:
                continue
            name = canonicalize_name(requirement.name)
            assert name in locked, f"{name} is not locked: run `make lock`"
            assert requirement.specifier.contains(locked[name], prereleases=True), (
                f"{name}=={locked[name]} is not {requirement.specifier}: run `make lock`"
            )
    assert not NOT_IN_THE_RUNTIME & runtime.keys()


def _differences(comparison: filecmp.dircmp) -> list[str]:
    found = [
        f"{comparison.left}/{name}"
        for name in comparison.left_only + comparison.right_only + comparison.diff_files
        if name != "__pycache__"
    ]
    for sub in comparison.subdirs.values():
        found += _differences(sub)
    return found

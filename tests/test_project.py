"""Checks of the project itself: proto lint, generated code up to date, Python lint."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_protos_pass_buf_lint():
    result = subprocess.run(
        [BIN / "buf", "lint"], cwd=ROOT / "protos", capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_matches_the_protos(tmp_path):
    subprocess.run(
        [sys.executable, ROOT / "scripts" / "gen_protos.py", "--out", tmp_path],
        check=True,
        capture_output=True,
    )
    fresh, committed = tmp_path / "creditline", ROOT / "creditline"
    stale = _differences(filecmp.dircmp(fresh, committed))
    assert not stale, f"generated code is stale, run `make gen`: {stale}"


def test_python_passes_ruff():
    result = subprocess.run(
        [BIN / "ruff", "check", "services", "tests", "bench", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _differences(comparison: filecmp.dircmp) -> list[str]:
    found = [
        f"{comparison.left}/{name}"
        for name in comparison.left_only + comparison.right_only + comparison.diff_files
        if name != "__pycache__"
    ]
    for sub in comparison.subdirs.values():
        found += _differences(sub)
    return found

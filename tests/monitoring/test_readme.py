"""The README's monitoring grpcurl commands, sent as printed through a reflection-only client.

The real grpcurl runs the same commands in tests/test_readme_grpcurl.py.
"""

import shlex
from pathlib import Path

import pytest

from tests.monitoring.test_streams import wait_until_rescored
from tests.reflection_client import ReflectionClient

README = Path(__file__).resolve().parents[2] / "README.md"
ADDRESS = "127.0.0.1:50053"
SERVICE = "creditline.monitoring.v1.MonitoringService"


def readme_commands() -> list[list[str]]:
    # Without the shell around a command: the watch's `|| [ $? -eq 68 ]` (grpcurl's exit code
    # when its -max-time ends the watch).
    return [
        shlex.split(line.partition(" || ")[0])
        for line in README.read_text().splitlines()
        if line.startswith("grpcurl ") and ADDRESS in line
    ]


def run_readme(client: ReflectionClient, after_publish=lambda: None) -> dict[str, object]:
    answers: dict[str, object] = {}
    for argv in readme_commands():
        assert argv[:2] == ["grpcurl", "-plaintext"], argv
        method = argv[-1]
        if method == "list":
            answers["list"] = client.list_services()
        elif argv[-2] == "describe":
            answers["describe"] = list(client.describe(method).methods_by_name)
        elif method.endswith("/WatchAlerts"):
            # grpcurl -max-time ends the watch; read what is there and hang up.
            answers["WatchAlerts"] = client.stream(method, argv[argv.index("-d") + 1], count=1)
        else:
            answers[method.rsplit("/", 1)[1]] = client.call(method, argv[argv.index("-d") + 1])
            if method.endswith("/PublishEvents"):
                after_publish()
    return answers


def test_readme_has_the_documented_commands():
    methods = [argv[-1].rsplit("/", 1)[-1] for argv in readme_commands()]
    assert methods == [
        "list",
        SERVICE,
        "PublishEvents",
        "ListAlerts",
        "GetAccountRisk",
        "WatchAlerts",
    ]


@pytest.fixture
def reflection(monitoring) -> ReflectionClient:
    return ReflectionClient(monitoring.channel)


def test_readme_commands_work_as_printed(reflection, monitoring):
    # The batch is rescored in the background: wait for it, so the listing is settled.
    answers = run_readme(reflection, after_publish=lambda: wait_until_rescored(monitoring))
    assert SERVICE in answers["list"]
    assert {"Ingest", "PublishEvents", "WatchAlerts"} <= set(answers["describe"])
    ack = answers["PublishEvents"]["ack"]
    assert (ack["applied"], ack["signalsRaised"]) == (4, 2)
    alerts = answers["ListAlerts"]["alerts"]
    assert [(a["type"], a["severity"]) for a in alerts] == [
        ("behaviour_rescored", "ALERT_SEVERITY_INFO"),
        ("days_past_due_30", "ALERT_SEVERITY_MEDIUM"),
        ("days_past_due_1", "ALERT_SEVERITY_LOW"),
    ]
    risk = answers["GetAccountRisk"]["risk"]
    assert risk["profile"]["days_past_due"] == 30
    assert risk["profile"]["utilisation"] == pytest.approx(0.6)
    assert {s["type"] for s in risk["openSignals"]} == {"days_past_due_1", "days_past_due_30"}
    watched = answers["WatchAlerts"]
    assert [w["alert"]["type"] for w in watched] == ["days_past_due_30"]

    again = run_readme(reflection)["PublishEvents"]["ack"]
    assert (again.get("applied", 0), again["duplicates"]) == (0, 4)

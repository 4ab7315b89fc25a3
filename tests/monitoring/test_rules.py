"""The detection rules as data: the default loads, bad documents are refused by name, a bad
file never replaces the rules in force, and a running server picks up a good one."""

import os
import time

import pytest
import yaml

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from services.monitoring.rules import (
    DEFAULT_RULES,
    RulesError,
    RulesHolder,
    load_rules,
    parse_rules,
)
from tests.monitoring.events import Customer, publish
from tests.monitoring.test_streams import wait_until_rescored


def default_document() -> dict:
    return yaml.safe_load(DEFAULT_RULES.read_text())


def test_the_default_rules_load_and_declare_every_signal():
    rules = load_rules()
    assert rules.version == "2026.11.2"
    assert set(rules.signals) == set(rules.signal_types())
    assert [t.days for t in rules.days_past_due.thresholds] == [1, 30, 60, 90]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.pop("version"), "version: Field required"),
        (lambda d: d["partial_payments"].update(consecutive=0), "partial_payments.consecutive"),
        (lambda d: d["partial_payments"].update(severity="dire"), "one of info, low, medium"),
        (lambda d: d["days_past_due"]["thresholds"].reverse(), "ascending order"),
        (lambda d: d["utilisation"].update(at_least=1.5), "utilisation.at_least"),
        (lambda d: d["utilisation"].update(window=7), "utilisation.window: Extra inputs"),
        (lambda d: d["abnormal_transaction"].update(min_history=60), "larger than history_size"),
        (lambda d: d["signals"].pop("multiple_lending"), "no entry for multiple_lending"),
        (lambda d: d["signals"].update(made_up={"cool_off_days": 1, "report": True}), "made_up"),
        (lambda d: d["signals"]["income_decline"].update(cool_off_days=-1), "cool_off_days"),
        (
            lambda d: d["signals"]["on_time_streak"].update(report=True),
            "signals.on_time_streak.report: limits has no signal type for on_time_streak",
        ),
        (lambda d: d["signals"].pop("behaviour_rescored"), "no entry for behaviour_rescored"),
    ],
)
def test_invalid_rules_are_refused_with_the_problem_named(change, problem):
    document = default_document()
    change(document)
    with pytest.raises(RulesError) as raised:
        parse_rules(yaml.safe_dump(document), "rules.yaml")
    assert problem in str(raised.value)


def test_a_bad_file_never_replaces_the_rules_in_force(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(DEFAULT_RULES.read_text())
    holder = RulesHolder(path)
    path.write_text("version: [broken")
    _touch_later(path)
    assert holder.reload_if_changed() is False
    assert holder.rules.version == "2026.11.2"


def test_a_running_server_picks_up_new_rules(start_monitoring, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(DEFAULT_RULES.read_text())
    monitoring = start_monitoring(rules_file=path, rules_reload_interval_seconds=0.1)
    document = default_document()
    document["version"] = "2026.12.1"
    document["multiple_lending"]["windows"][0]["min_inquiries"] = 1
    path.write_text(yaml.safe_dump(document))
    _touch_later(path)
    holder = monitoring.server.bindings[0].servicer.rules
    deadline = time.monotonic() + 30
    while holder.rules.version != "2026.12.1" and time.monotonic() < deadline:
        time.sleep(0.05)
    customer = Customer("acct-rules")
    assert publish(monitoring, customer.opened(), customer.inquiry()).signals_raised == 1
    wait_until_rescored(monitoring)
    alerts = monitoring.ListAlerts(pb.ListAlertsRequest(), timeout=10).alerts
    assert [(a.type, a.rules_version) for a in alerts] == [
        ("behaviour_rescored", "2026.12.1"),
        ("multiple_lending", "2026.12.1"),
    ]


def _touch_later(path) -> None:
    """Moves the file's modification time on, so a change within one clock tick is seen."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

"""The credit policy as data: the default loads, bad documents are refused by name, and a bad
file never replaces a good one."""

import os

import pytest
import yaml

from services.limits.policy import (
    DEFAULT_POLICY,
    PolicyError,
    PolicyHolder,
    Severity,
    SignalAction,
    load_policy,
    parse_policy,
)


def default_document() -> dict:
    return yaml.safe_load(DEFAULT_POLICY.read_text())


def parse(document: dict):
    return parse_policy(yaml.safe_dump(document), "test")


def test_each_model_maps_its_own_bands_to_tiers():
    policy = load_policy()
    assert policy.version
    # Acquisition: application band D went bad at 53.4% on its holdout: no first line.
    first_lines = {band: policy.acquisition_tier(band) for band in "ABCDE"}
    assert {band: t.name if t else None for band, t in first_lines.items()} == {
        "A": "prime", "B": "standard", "C": "emerging", "D": None, "E": None,
    }  # fmt: skip
    # Account management: behaviour band D defaulted at 10.7%: a small line, still managed.
    managed = {band: policy.managed_tier(band) for band in "ABCDE"}
    assert {band: t.name if t else None for band, t in managed.items()} == {
        "A": "prime", "B": "standard", "C": "emerging", "D": "thin_file", "E": None,
    }  # fmt: skip
    assert [policy.tier_rank(name) for name in ("prime", "thin_file", None)] == [0, 3, 4]


def test_signal_actions_by_severity():
    policy = load_policy()
    assert policy.actions_for("multiple_lending", Severity.low) == []
    assert [r.action for r in policy.actions_for("multiple_lending", Severity.medium)] == [
        SignalAction.watchlist
    ]
    assert [r.action for r in policy.actions_for("multiple_lending", Severity.critical)] == [
        SignalAction.watchlist,
        SignalAction.reduce,
    ]
    by_days = {days: policy.actions_for("days_past_due", Severity.low, days)[-1].action
               for days in (1, 29, 30, 60, 90)}  # fmt: skip
    assert by_days == {
        1: SignalAction.watchlist,
        29: SignalAction.watchlist,
        30: SignalAction.reduce,
        60: SignalAction.freeze,
        90: SignalAction.close,
    }


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["tiers"][0].update(initial_line=10**9), "tiers.0: Value error, initial_line"),
        (lambda d: d["acquisition"].pop("E"), "acquisition: bands E have no tier"),
        (lambda d: d["account_management"].update(B="gold"), "account_management.B: 'gold' is no"),
        (lambda d: d["tiers"][1].update(name="prime"), "tier names must be unique"),
        (lambda d: d["tiers"][0].update(increase_step=-5), "tiers.0.increase_step"),
        (lambda d: d["review"].update(cadence_day=365), "review.cadence_day: Extra inputs"),
        (lambda d: d["review"].update(max_change_fraction=1.5), "review.max_change_fraction"),
        (lambda d: d["signal_actions"][1].pop("line_fraction"), "line_fraction is required"),
        (lambda d: d["signal_actions"][0].update(min_severity="dire"), "min_severity must be"),
        (lambda d: d["signal_actions"][0].update(action="ban"), "signal_actions.0.action"),
        (
            lambda d: d["signal_actions"][4].update(signal="partial_payment"),
            "signal_actions.4: Value error, signal 'partial_payment' is not a warning signal",
        ),
        (
            lambda d: d["signal_actions"][4].update(signal="on_time_repayment"),
            "signal_actions.4: Value error, signal 'on_time_repayment' is not a warning",
        ),
        (
            lambda d: d["signal_actions"][0].pop("min_days_past_due"),
            "min_days_past_due is required for days_past_due",
        ),
        (
            lambda d: d["signal_actions"][4].update(min_days_past_due=3),
            "min_days_past_due is required for days_past_due, and only there",
        ),
        (lambda d: d["draws"].update(stop_at_days_past_due=0), "draws.stop_at_days_past_due"),
        (lambda d: d.pop("risk_state"), "risk_state: Field required"),
        (lambda d: d["watchlist"].update(clean_period_days=0), "watchlist.clean_period_days"),
        (lambda d: d.pop("application"), "application: Field required"),
        (lambda d: d["reopening"]["stages"].pop(1), "numbered 1, 2, 3"),
        (lambda d: d["reopening"]["stages"][0].update(tier_line=True), "exactly one of"),
        (lambda d: d.update(currency_code="yuan"), "currency_code"),
        (lambda d: d.pop("hardship"), "hardship: Field required"),
    ],
)
def test_invalid_policies_are_refused_with_the_problem_named(change, problem):
    document = default_document()
    change(document)
    with pytest.raises(PolicyError) as raised:
        parse(document)
    assert problem in str(raised.value)


def test_malformed_yaml_is_refused():
    with pytest.raises(PolicyError, match="not valid YAML"):
        parse_policy("tiers: [unclosed", "broken.yaml")
    with pytest.raises(PolicyError, match="mapping at the top level"):
        parse_policy("- just\n- a list\n", "list.yaml")


def test_a_bad_file_never_replaces_the_policy_in_force(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(DEFAULT_POLICY.read_text())
    holder = PolicyHolder(path)
    assert holder.policy.version == "2026.12.5"

    path.write_text("tiers: [this is not a policy")
    _touch_later(path)
    assert holder.reload_if_changed() is False
    assert holder.policy.version == "2026.12.5"

    document = default_document()
    document["version"] = "2027.1.1"
    path.write_text(yaml.safe_dump(document))
    _touch_later(path)
    assert holder.reload_if_changed() is True
    assert holder.policy.version == "2027.1.1"
    assert holder.reload_if_changed() is False  # unchanged file: nothing to do


def test_a_bad_file_at_start_fails_fast(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("version: x\n")
    with pytest.raises(PolicyError, match="tiers: Field required"):
        PolicyHolder(path)


def _touch_later(path) -> None:
    """Moves the modification time on, as a later write would on a coarse clock."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

"""Early collections treatment of the default policy, through the transport-free engine: a
customer followed from day 1 to day 90 past due, a cure that stops the treatment and says so,
silence during a hardship arrangement and an open appeal, the weekly contact cap and the quiet
hours of the customer's time zone, and a policy that cannot work refused with its path."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from services.limits.collections import (
    StepKind,
    StopReason,
    TreatmentStep,
    days_past_due_now,
    next_step,
)
from services.limits.policy import DEFAULT_POLICY, PolicyError, load_policy, parse_policy
from services.limits.records import Account, Hardship, RiskState
from tests.limits.test_decisions import opened

POLICY = load_policy()
RULES = POLICY.collections
# 10:00 in Shanghai: outside the quiet hours.
DUE = datetime(2026, 3, 1, 2, tzinfo=UTC)


def delinquent(account: Account, since: datetime = DUE) -> Account:
    return replace(account, risk=RiskState(days_past_due=1, past_due_since=since))


def cured(account: Account) -> Account:
    return replace(account, risk=RiskState())


def run_daily(
    account: Account,
    days: range,
    steps: list[TreatmentStep],
    appeal_open: bool = False,
    time_zone: str | None = None,
    hour: int = 0,
) -> list[TreatmentStep]:
    """The treatment run once a day (at DUE + `hour`), adding its steps to `steps`."""
    for day in days:
        now = DUE + timedelta(days=day, hours=hour)
        step = next_step(RULES, account, steps, appeal_open, now, time_zone)
        if step is not None:
            steps.append(step)
    return steps


def test_a_customer_is_followed_from_day_1_to_day_90_past_due():
    account = delinquent(opened())
    steps = run_daily(account, range(0, 95), [])
    contacts = [(s.days_past_due, s.action, s.channel) for s in steps]
    # The first call waits a day for the weekly cap (three reminders in the last 7 days).
    assert contacts == [
        (1, "reminder", "push"), (3, "reminder", "push"), (5, "reminder", "push"),
        (8, "call", "phone"), (11, "call", "phone"), (14, "call", "phone"),
        (17, "call", "phone"), (20, "call", "phone"), (23, "call", "phone"),
        (26, "call", "phone"), (29, "call", "phone"),
        (30, "hardship_offer", "sms"), (37, "hardship_offer", "sms"),
        (44, "hardship_offer", "sms"), (51, "hardship_offer", "sms"),
        (58, "hardship_offer", "sms"),
        (60, "formal_notice", "letter"), (74, "formal_notice", "letter"),
        (88, "formal_notice", "letter"),
        (90, "agency_handoff", "agency"),
    ]  # fmt: skip
    assert all(s.kind is StepKind.contact for s in steps)
    # Every step has its reason in both locales; a hardship offer links to EnrollHardship.
    for step in steps:
        assert str(step.days_past_due) in step.reason.texts["en"]
        assert step.reason.texts["zh-CN"] and step.reason.code.startswith("COLLECTIONS_")
        assert step.offers_hardship == (step.action == "hardship_offer")
    assert len({s.key for s in steps}) == len(steps)
    assert days_past_due_now(account, DUE + timedelta(days=89)) == 90


def test_a_repeated_run_adds_nothing():
    account = delinquent(opened())
    steps = run_daily(account, range(0, 10), [])
    again = next_step(RULES, account, steps, False, DUE + timedelta(days=9))
    assert again is None


def test_a_cure_stops_the_treatment_and_says_so_once():
    account = delinquent(opened())
    steps = run_daily(account, range(0, 20), [])
    run_daily(cured(account), range(20, 40), steps)
    (stop,) = [s for s in steps if s.kind is StepKind.stopped]
    assert stop is steps[-1] and stop.stop_reason is StopReason.cured
    assert stop.created_at == DUE + timedelta(days=20)
    assert stop.reason.texts["en"] == "The overdue payments were made"
    # A new delinquency is a new episode: its treatment starts again at a reminder.
    again = delinquent(account, since=DUE + timedelta(days=60))
    run_daily(again, range(60, 62), steps)
    assert (steps[-1].action, steps[-1].days_past_due) == ("reminder", 1)
    assert steps[-1].episode_started_at != steps[0].episode_started_at


def test_no_contact_while_a_hardship_arrangement_runs_then_treatment_resumes():
    account = delinquent(opened())
    steps = run_daily(account, range(0, 35), [])
    hardship = Hardship(
        started_at=DUE + timedelta(days=35),
        ends_at=DUE + timedelta(days=65),
        term_months=1,
        monthly_instalment=10_000,
    )
    enrolled = replace(account, hardship=hardship)
    before = len(steps)
    run_daily(enrolled, range(35, 65), steps)
    during = steps[before:]
    assert [(s.kind, s.stop_reason) for s in during] == [(StepKind.stopped, StopReason.hardship)]
    run_daily(enrolled, range(65, 67), steps)  # ended, and still past due
    assert (steps[-1].kind, steps[-1].action) == (StepKind.contact, "formal_notice")


def test_no_contact_while_an_appeal_is_open():
    account = delinquent(opened())
    steps = run_daily(account, range(0, 8), [])
    before = len(steps)
    run_daily(account, range(8, 30), steps, appeal_open=True)
    assert [s.stop_reason for s in steps[before:]] == [StopReason.appeal_open]


def test_the_weekly_contact_cap_holds():
    rules = RULES.model_copy(
        update={
            "treatments": [
                RULES.treatments[0].model_copy(update={"to_days": None, "every_days": 1})
            ],
            "contact_cap_per_week": 2,
        }
    )
    account = delinquent(opened())
    steps: list[TreatmentStep] = []
    for hour in range(0, 24 * 30, 6):
        now = DUE + timedelta(hours=hour)
        if (step := next_step(rules, account, steps, False, now)) is not None:
            steps.append(step)
    for step in steps:
        window = [s for s in steps if timedelta(0) <= step.created_at - s.created_at < timedelta(7)]
        assert len(window) <= 2
    assert len(steps) >= 8  # the cap, not silence: about two a week for a month


@pytest.mark.parametrize(
    ("time_zone", "utc_hour", "contacted"),
    [
        ("Asia/Shanghai", 14, False),  # 22:00 in Shanghai
        ("Asia/Shanghai", 23, False),  # 07:00
        ("Asia/Shanghai", 0, True),  # 08:00
        ("Asia/Shanghai", 12, True),  # 20:00
        ("Europe/London", 14, True),  # 14:00 in London
        ("Europe/London", 22, False),  # 22:00
    ],
)
def test_quiet_hours_hold_in_the_customers_time_zone(time_zone, utc_hour, contacted):
    account = delinquent(opened())
    now = datetime(2026, 3, 2, utc_hour, tzinfo=UTC)
    step = next_step(RULES, account, [], False, now, time_zone)
    assert (step is not None) == contacted


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda c: c.update(contact_cap_per_week=0), "collections.contact_cap_per_week"),
        (lambda c: c["treatments"][1].update(from_days=8), "treatments.1.from_days"),
        (lambda c: c["treatments"][-1].update(to_days=120), "the last treatment has no end"),
        (lambda c: c["treatments"][0].update(action="threaten"), "treatments.0.action"),
        (lambda c: c.update(default_time_zone="Mars/Olympus"), "no IANA time zone"),
        (lambda c: c["quiet_hours"].update(start="25:00"), "quiet_hours.start"),
    ],
)
def test_a_collections_policy_that_cannot_work_is_refused_with_its_path(change, problem):
    document = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    change(document["collections"])
    with pytest.raises(PolicyError) as refused:
        parse_policy(yaml.safe_dump(document), "limits-policy.yaml")
    assert "limits-policy.yaml" in str(refused.value) and problem in str(refused.value)

"""Early collections through real servers on SQLite and PostgreSQL: treatment steps follow a
customer from day 1 to day 90 past due, stop on a cure and say so, pause during a hardship
arrangement and while an appeal is open; the weekly contact cap and the quiet hours of the
customer's own time zone hold; the step stream resumes after a restart without gap or repeat;
acknowledgements are checked; the customer's view shows exactly that customer's steps.

Time is the test clock's: RunCollections brings the accounts through the treatment as of it
(the scheduled worker is off, but in the one test that waits for it)."""

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest

from creditline.limits.v1 import limits_service_pb2 as pb
from tests.limits.test_notices import appeal, fields_of, history, resolve, view
from tests.limits.test_service import (
    GOOD_APPLICANT,
    cny,
    draw,
    failed,
    features,
    open_account,
    past_due,
    report,
    rid,
    risk,
    signal,
    timestamp,
)

ENROLL_HARDSHIP = "creditline.limits.v1.LimitsService/EnrollHardship"
CONTACT, STOPPED = pb.TREATMENT_STEP_KIND_CONTACT, pb.TREATMENT_STEP_KIND_STOPPED


@pytest.fixture
def limits(start_limits, scoring):
    """Limits without its scheduled worker: the tests run the treatment with RunCollections."""
    return start_limits(scoring.port, collections_interval_seconds=0)


def run(stub, request_id: str | None = None) -> pb.RunCollectionsResponse:
    request = pb.RunCollectionsRequest(request_id=request_id or rid())
    return stub.RunCollections(request, timeout=30)


def delinquent(stub, clock, customer_id: str | None = None, time_zone: str = "") -> str:
    """A customer's new line with a loan drawn and its payment 1 day past due now; its id."""
    request = pb.OpenAccountRequest(
        request_id=rid(),
        customer_id=customer_id or f"cust-{rid()}",
        features=features(GOOD_APPLICANT),
        monthly_income=cny(20_000),
        time_zone=time_zone,
    )
    account_id = stub.OpenAccount(request, timeout=10).account.account_id
    draw(stub, account_id, 1_000)
    report(stub, past_due(account_id, 1, clock.now))
    return account_id


def steps(stub, customer_id: str) -> list[pb.TreatmentStep]:
    """The customer's treatment steps from their own view, oldest first."""
    return [s for a in view(stub, customer_id).accounts for s in reversed(a.treatment_steps)]


def customer_of(stub, account_id: str) -> str:
    request = pb.GetAccountRequest(account_id=account_id)
    return stub.GetAccount(request, timeout=5).account.customer_id


def contacts(found: list[pb.TreatmentStep]) -> list[tuple[int, str, str]]:
    return [
        (
            s.days_past_due,
            pb.TreatmentAction.Name(s.action).removeprefix("TREATMENT_ACTION_").lower(),
            pb.ContactChannel.Name(s.channel).removeprefix("CONTACT_CHANNEL_").lower(),
        )
        for s in found
        if s.kind == CONTACT
    ]


def watch(stub, after: str, count: int, timeout: float = 20) -> list[pb.TreatmentStep]:
    """The first `count` steps after `after`, from WatchTreatmentSteps."""
    found: list[pb.TreatmentStep] = []
    if count == 0:
        return found
    request = pb.WatchTreatmentStepsRequest(after_cursor=after)
    stream = stub.WatchTreatmentSteps(request, timeout=timeout)
    for item in stream:
        if item.HasField("step"):
            found.append(item.step)
            if len(found) == count:
                stream.cancel()
                break
    return found


def daily(stub, clock, origin: datetime, days: range, signals=None) -> int:
    """A run on each of `days` (day n is n days after `origin`), after the day's `signals(day)`
    as monitoring would report them; the number of steps the runs stored."""
    stored = 0
    for day in days:
        clock.now = origin + timedelta(days=day)
        for sent in (signals or (lambda _: []))(day):
            report(stub, sent)
        done = run(stub)
        stored += done.contacts + done.stops
    return stored


def test_treatment_follows_a_customer_from_day_1_to_day_90_past_due(limits, clock):
    customer_id = f"cust-{rid()}"
    account_id = delinquent(limits, clock, customer_id)
    started = clock.now
    # Monitoring reports the thresholds as they pass: the line is cut, frozen, closed.
    thresholds = {29: 30, 59: 60, 89: 90}

    def signals(day):
        return [past_due(account_id, thresholds[day], clock.now)] if day in thresholds else []

    daily(limits, clock, started, range(0, 95), signals)

    found = steps(limits, customer_id)
    # The call waits a day for the weekly cap: three reminders in the last 7 days.
    assert contacts(found) == [
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
    assert all(s.kind == CONTACT and s.account_id == account_id for s in found)
    for step in found:
        # Decided the day it was due, at the run's time; with its reason in both locales.
        created = step.create_time.ToDatetime(UTC)
        assert created == started + timedelta(days=step.days_past_due - 1)
        assert step.past_due_since.ToDatetime(UTC) == started
        assert str(step.days_past_due) in step.reason.texts["en"] and step.reason.texts["zh-CN"]
        assert step.reason.code.startswith("COLLECTIONS_")
        assert step.time_zone == "Asia/Shanghai" and step.policy_version
        # A hardship offer links to EnrollHardship; nothing else does.
        offer = step.action == pb.TREATMENT_ACTION_HARDSHIP_OFFER
        assert step.offers_hardship == offer
        assert step.enroll_method == (ENROLL_HARDSHIP if offer else "")
    cursors = [int(s.cursor) for s in found]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)


def test_a_run_is_idempotent_by_request_id_and_a_repeated_run_adds_nothing(limits, clock):
    customer_id = f"cust-{rid()}"
    delinquent(limits, clock, customer_id)
    first = run(limits, "collections-run-1")
    assert (first.accounts_examined, first.contacts, first.stops) == (1, 1, 0)
    assert run(limits, "collections-run-1") == first
    again = run(limits)
    assert (again.accounts_examined, again.contacts, again.stops) == (1, 0, 0)
    assert len(steps(limits, customer_id)) == 1
    error = failed(limits.RunCollections, pb.RunCollectionsRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(error) == {"request_id"}


def test_a_cure_stops_the_treatment_and_says_so_once(limits, clock):
    customer_id = f"cust-{rid()}"
    account_id = delinquent(limits, clock, customer_id)
    started = clock.now
    daily(limits, clock, started, range(0, 10))
    clock.advance(days=1)
    report(limits, signal(account_id, "delinquency_cured", risk=risk(clock.now)))
    cured = run(limits)
    assert (cured.contacts, cured.stops) == (0, 1)
    daily(limits, clock, started, range(11, 20))

    found = steps(limits, customer_id)
    stop = found[-1]
    assert [s for s in found if s.kind == STOPPED] == [stop]
    assert stop.stop_reason == pb.TREATMENT_STOP_REASON_CURED
    assert stop.reason.texts["en"] == "The overdue payments were made"
    assert stop.create_time.ToDatetime(UTC) == clock.now - timedelta(days=9)
    # Cured, the account is no longer examined.
    assert run(limits).accounts_examined == 0


def test_no_contact_while_a_hardship_arrangement_runs_then_treatment_resumes(limits, clock):
    customer_id = f"cust-{rid()}"
    account_id = open_account(limits, customer_id=customer_id).account.account_id
    draw(limits, account_id, 1_000)
    clock.advance(days=280)  # hardship needs 9 months on book
    report(limits, past_due(account_id, 1, clock.now))
    daily(limits, clock, clock.now, range(0, 31))
    assert contacts(steps(limits, customer_id))[-1] == (30, "hardship_offer", "sms")

    # The customer takes the offer.
    enrolled = limits.EnrollHardship(
        pb.EnrollHardshipRequest(request_id=rid(), account_id=account_id, term_months=1),
        timeout=5,
    )
    ends_at = enrolled.account.hardship.end_time.ToDatetime(UTC)
    before = len(steps(limits, customer_id))
    while clock.now + timedelta(days=1) < ends_at:
        clock.advance(days=1)
        run(limits)
    during = steps(limits, customer_id)[before:]
    assert [(s.kind, s.stop_reason) for s in during] == [
        (STOPPED, pb.TREATMENT_STOP_REASON_HARDSHIP)
    ]
    assert during[0].reason.texts["en"] == "A hardship arrangement is running"

    # Ended, and the payment is still past due: contacts resume at the day's bucket.
    clock.advance(days=1)
    run(limits)
    resumed = steps(limits, customer_id)[-1]
    assert (resumed.kind, resumed.action) == (CONTACT, pb.TREATMENT_ACTION_FORMAL_NOTICE)


def test_no_contact_while_an_appeal_is_open(limits, clock):
    customer_id = f"cust-{rid()}"
    account_id = delinquent(limits, clock, customer_id)
    started = clock.now
    run(limits)  # day 1: a reminder
    (watchlisted,) = [
        e for e in history(limits, account_id) if e.type == pb.LIMIT_EVENT_TYPE_WATCHLISTED
    ]
    clock.advance(days=1)
    filed = appeal(limits, account_id, watchlisted.event_id)
    daily(limits, clock, started, range(1, 8))
    found = steps(limits, customer_id)
    assert [(s.kind, s.stop_reason) for s in found[1:]] == [
        (STOPPED, pb.TREATMENT_STOP_REASON_APPEAL_OPEN)
    ]
    assert found[1].create_time.ToDatetime(UTC) == found[0].create_time.ToDatetime(UTC) + (
        timedelta(days=1)
    )

    resolve(limits, filed.appeal_id, reverse=False)  # upheld: the account is still past due
    run(limits)
    resumed = steps(limits, customer_id)[-1]
    assert (resumed.kind, resumed.action, resumed.days_past_due) == (
        CONTACT,
        pb.TREATMENT_ACTION_CALL,
        8,
    )


def test_contact_caps_and_quiet_hours_hold_in_the_customers_time_zone(limits, clock):
    # 09:00 UTC: 17:00 in Shanghai (the policy's default zone), 04:00 in New York.
    assert clock.now.hour == 9
    shanghai = f"cust-{rid()}"
    new_york = f"cust-{rid()}"
    delinquent(limits, clock, shanghai)
    ny_account = delinquent(limits, clock, new_york, time_zone="America/New_York")
    read = limits.GetAccount(pb.GetAccountRequest(account_id=ny_account), timeout=5)
    assert read.account.time_zone == "America/New_York"

    run(limits)
    assert len(steps(limits, shanghai)) == 1 and steps(limits, new_york) == []
    clock.advance(hours=5)  # 22:00 in Shanghai (quiet), 09:00 in New York
    run(limits)
    assert len(steps(limits, shanghai)) == 1 and len(steps(limits, new_york)) == 1

    # A run every hour for two weeks.
    for _ in range(14 * 24):
        clock.advance(hours=1)
        run(limits)
    for customer, zone in ((shanghai, "Asia/Shanghai"), (new_york, "America/New_York")):
        found = steps(limits, customer)
        times = [s.create_time.ToDatetime(UTC) for s in found if s.kind == CONTACT]
        assert len(times) >= 6
        for moment in times:
            local = moment.astimezone(ZoneInfo(zone))
            assert 8 <= local.hour < 21, f"{customer} contacted at {local}"
            in_week = [t for t in times if moment <= t < moment + timedelta(days=7)]
            assert len(in_week) <= 3, f"{customer}: {len(in_week)} contacts in 7 days"
        assert {s.time_zone for s in found} == {zone}


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Asia", "asia/shanghai", "../etc/passwd"])
def test_an_unknown_time_zone_is_refused(limits, zone):
    request = pb.OpenAccountRequest(
        request_id=rid(),
        customer_id=f"cust-{rid()}",
        features=features(GOOD_APPLICANT),
        monthly_income=cny(20_000),
        time_zone=zone,
    )
    error = failed(limits.OpenAccount, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(error) == {"time_zone"}


def test_the_step_stream_resumes_after_a_restart_without_gap_or_repeat(
    start_limits, scoring, clock
):
    first = start_limits(scoring.port, collections_interval_seconds=0)
    accounts = [delinquent(first, clock) for _ in range(3)]
    started = clock.now
    assert daily(first, clock, started, range(0, 6)) == 9  # reminders at 1, 3 and 5 days
    seen = watch(first, "0", 9)
    assert {s.account_id for s in seen} == set(accounts)
    first.server.stop(0)

    second = start_limits(scoring.port, collections_interval_seconds=0)
    later = daily(second, clock, started, range(6, 12))  # calls at 8 and 11 days
    report(second, signal(accounts[0], "delinquency_cured", risk=risk(clock.now)))
    later += run(second).stops
    assert later == 7
    resumed = watch(second, seen[-1].cursor, later)
    everything = watch(second, "0", 9 + later)
    assert [s.step_id for s in seen + resumed] == [s.step_id for s in everything]
    assert [int(s.cursor) for s in everything] == list(range(1, 9 + later + 1))
    assert everything[-1].stop_reason == pb.TREATMENT_STOP_REASON_CURED


def test_acknowledgements_are_idempotent_and_checked(limits, clock):
    customer_id = f"cust-{rid()}"
    delinquent(limits, clock, customer_id)
    run(limits)
    (step,) = steps(limits, customer_id)
    assert not step.HasField("carry_out_time")

    def acknowledge(step_id, request_id=None, at=None):
        request = pb.AcknowledgeTreatmentStepRequest(
            request_id=request_id or rid(), step_id=step_id
        )
        if at is not None:
            request.carry_out_time.CopyFrom(timestamp(at))
        return limits.AcknowledgeTreatmentStep(request, timeout=5)

    clock.advance(minutes=10)
    done = acknowledge(step.step_id, "ack-1").step
    assert done.carry_out_time.ToDatetime(UTC) == clock.now
    assert acknowledge(step.step_id, "ack-1").step == done
    # Acknowledged again later: the first time stands.
    clock.advance(hours=1)
    assert acknowledge(step.step_id).step.carry_out_time == done.carry_out_time
    assert steps(limits, customer_id)[0].carry_out_time == done.carry_out_time

    unknown = failed(
        limits.AcknowledgeTreatmentStep,
        pb.AcknowledgeTreatmentStepRequest(request_id=rid(), step_id="no-such-step"),
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    empty = failed(limits.AcknowledgeTreatmentStep, pb.AcknowledgeTreatmentStepRequest())
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(empty) == {"request_id", "step_id"}
    for at in (clock.now + timedelta(days=1), step.create_time.ToDatetime(UTC) - timedelta(1)):
        early_or_late = pb.AcknowledgeTreatmentStepRequest(
            request_id=rid(), step_id=step.step_id, carry_out_time=timestamp(at)
        )
        error = failed(limits.AcknowledgeTreatmentStep, early_or_late)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fields_of(error) == {"carry_out_time"}
    # The same request id asking for something else of the same step is refused.
    reused = pb.AcknowledgeTreatmentStepRequest(request_id="ack-1", step_id=step.step_id)
    reused.carry_out_time.CopyFrom(timestamp(clock.now - timedelta(minutes=1)))
    assert failed(limits.AcknowledgeTreatmentStep, reused).code() == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    bad_cursor = limits.WatchTreatmentSteps(
        pb.WatchTreatmentStepsRequest(after_cursor="-1"), timeout=5
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(bad_cursor)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(raised.value) == {"after_cursor"}


def test_the_customer_view_shows_exactly_that_customers_steps(limits, clock):
    customers = [f"cust-{rid()}" for _ in range(3)]
    accounts = [delinquent(limits, clock, c) for c in customers[:2]]
    open_account(limits, customer_id=customers[2])  # current: no treatment
    stored = daily(limits, clock, clock.now, range(0, 10))
    everything = watch(limits, "0", stored)
    assert len(everything) == stored == 8  # reminders at 1, 3 and 5 days, a call at 8
    for customer, account_id in zip(customers, [*accounts, None], strict=True):
        own = [s.step_id for s in everything if s.account_id == account_id]
        assert [s.step_id for s in steps(limits, customer)] == own
        assert all(customer_of(limits, s.account_id) == customer for s in steps(limits, customer))


def test_the_scheduled_worker_runs_the_treatment(start_limits, scoring, clock):
    limits = start_limits(scoring.port, collections_interval_seconds=0.2)
    customer_id = f"cust-{rid()}"
    account_id = delinquent(limits, clock, customer_id)
    wait_for(lambda: len(steps(limits, customer_id)) == 1)
    clock.advance(days=1)
    report(limits, signal(account_id, "delinquency_cured", risk=risk(clock.now)))
    wait_for(lambda: len(steps(limits, customer_id)) == 2)
    kinds = [(s.kind, s.action, s.stop_reason) for s in steps(limits, customer_id)]
    assert kinds == [
        (CONTACT, pb.TREATMENT_ACTION_REMINDER, pb.TREATMENT_STOP_REASON_UNSPECIFIED),
        (STOPPED, pb.TREATMENT_ACTION_UNSPECIFIED, pb.TREATMENT_STOP_REASON_CURED),
    ]


def wait_for(condition, deadline_seconds: float = 60) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.1)

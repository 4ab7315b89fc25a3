"""Decision integrity, tried as a credit analyst trying to break a line would, through a real
limits server (and scoring) on SQLite and PostgreSQL: a cut that holds, no draw while past due,
one line per customer, decisions on the platform's own data, states with their exits, and
appeals decided on the account as it is now."""

import threading
from datetime import timedelta

import grpc
import pytest
from google.protobuf import descriptor_pb2

from creditline.limits.v1 import limits_service_pb2 as pb
from services.common.errors import error_info_of, violations_of
from tests.limits.test_service import (
    CLEAN_BEHAVIOUR,
    GOOD_APPLICANT,
    POOR_APPLICANT,
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

RISKY_BEHAVIOUR = {  # band E
    **CLEAN_BEHAVIOUR, "utilisation": 0.98, "max_dpd_3m": 45, "max_dpd_6m": 60,
    "max_dpd_12m": 60, "dpd30_episodes_12m": 2, "dpd60_episodes_12m": 1, "on_time_streak": 0,
    "partial_payments_6m": 3, "inquiries_7d": 3, "inquiries_30d": 6, "income_change": -0.4,
    "debt_to_income": 0.7,
}  # fmt: skip


def account_of(limits, account_id) -> pb.Account:
    return limits.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=5).account


def history(limits, account_id) -> list[pb.LimitEvent]:
    request = pb.ListLimitEventsRequest(account_id=account_id, page_size=500)
    return list(limits.ListLimitEvents(request, timeout=5).events)


def repay(limits, account_id, yuan) -> pb.Account:
    request = pb.RepayRequest(request_id=rid(), account_id=account_id, amount=cny(yuan))
    return limits.Repay(request, timeout=5).account


def conditions(account: pb.Account) -> set[str]:
    return {pb.ConditionType.Name(c.type) for c in account.risk.conditions}


# -- a reduction holds -------------------------------------------------------------------------


def test_a_cut_line_stays_cut_after_repayment_and_its_exit_is_an_event(limits, clock):
    account_id = open_account(limits).account.account_id  # 5,000 yuan
    draw(limits, account_id, 4_000)
    (outcome,) = report(limits, past_due(account_id, 30, clock.now))
    assert outcome.event.type == pb.LIMIT_EVENT_TYPE_REDUCED and outcome.event.notice.texts["en"]
    account = account_of(limits, account_id)
    assert account.credit_line.minor_units == 250_000  # half, below the 4,000 drawn
    assert account.available_credit.minor_units == 0
    assert "CONDITION_TYPE_OVER_LINE" in conditions(account)

    report(limits, signal(account_id, "delinquency_cured", risk=risk(clock.now)))
    assert repay(limits, account_id, 1_000).available_credit.minor_units == 0  # 3,000 > 2,500
    assert failed(limits.Draw, pb.DrawRequest(
        request_id=rid(), account_id=account_id, amount=cny(1), purpose="consumption",
    )).code() == grpc.StatusCode.FAILED_PRECONDITION  # fmt: skip
    back = repay(limits, account_id, 600)  # 2,400 drawn under a 2,500 line
    assert (back.credit_line.minor_units, back.available_credit.minor_units) == (250_000, 10_000)
    assert "CONDITION_TYPE_OVER_LINE" not in conditions(back)
    latest = history(limits, account_id)[0]
    assert latest.type == pb.LIMIT_EVENT_TYPE_BACK_WITHIN_LINE and latest.reasons


def test_a_fully_drawn_line_is_cut_with_an_event_and_a_notice(limits, clock):
    account_id = open_account(limits).account.account_id
    draw(limits, account_id, 5_000)
    (outcome,) = report(
        limits,
        signal(account_id, "income_decline", pb.SIGNAL_SEVERITY_MEDIUM, risk=risk(clock.now)),
    )
    assert outcome.event.type == pb.LIMIT_EVENT_TYPE_REDUCED
    assert outcome.event.line_after.minor_units == 350_000 and outcome.event.notice.texts["zh-CN"]


# -- delinquency blocks draws --------------------------------------------------------------------


def test_no_draw_while_a_payment_is_past_due_until_it_is_cured(limits, clock):
    account_id = open_account(limits).account.account_id
    report(limits, past_due(account_id, 1, clock.now))
    account = account_of(limits, account_id)
    assert account.available_credit.minor_units == 0 and account.risk.days_past_due == 1
    assert "CONDITION_TYPE_PAST_DUE" in conditions(account)
    refused = failed(limits.Draw, pb.DrawRequest(
        request_id=rid(), account_id=account_id, amount=cny(100), purpose="consumption",
    ))  # fmt: skip
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info_of(refused).reason == "PAST_DUE" and "past due" in refused.details()

    report(limits, signal(account_id, "delinquency_cured", risk=risk(clock.now)))
    assert draw(limits, account_id, 100).account.drawn.minor_units == 10_000


def test_paying_one_loan_on_time_does_not_cure_another(limits, clock):
    account_id = open_account(limits).account.account_id
    report(limits, past_due(account_id, 45, clock.now, loan_id="loan-a"))
    paid_b = signal(
        account_id, "on_time_repayment", loan_id="loan-b", risk=risk(clock.now, days_past_due=45)
    )
    report(limits, paid_b)
    account = account_of(limits, account_id)
    assert account.risk.days_past_due == 45
    assert dict(account.risk.loans_past_due) == {"loan-a": 45}
    assert failed(limits.Draw, pb.DrawRequest(
        request_id=rid(), account_id=account_id, amount=cny(1), purpose="consumption",
    )).code() == grpc.StatusCode.FAILED_PRECONDITION  # fmt: skip


# -- one customer, one line ----------------------------------------------------------------------


def test_a_closed_line_is_not_undone_by_applying_again(limits, clock):
    opened = open_account(limits, customer_id="cust-closed").account
    report(limits, past_due(opened.account_id, 90, clock.now))
    assert account_of(limits, opened.account_id).status == pb.ACCOUNT_STATUS_CLOSED
    again = failed(limits.OpenAccount, pb.OpenAccountRequest(
        request_id=rid(), customer_id="cust-closed", monthly_income=cny(20_000),
        features=features(GOOD_APPLICANT),
    ))  # fmt: skip
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info_of(again).metadata["account_id"] == opened.account_id
    assert "RequestReopen" in again.details()


def test_a_declined_applicant_reapplies_only_after_the_cool_off(limits, clock):
    declined = open_account(limits, POOR_APPLICANT, customer_id="cust-poor")
    assert declined.account.status == pb.ACCOUNT_STATUS_DECLINED
    clock.advance(days=29)
    too_soon = failed(limits.OpenAccount, pb.OpenAccountRequest(
        request_id=rid(), customer_id="cust-poor", monthly_income=cny(20_000),
        features=features(POOR_APPLICANT),
    ))  # fmt: skip
    assert too_soon.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info_of(too_soon).reason == "COOL_OFF"
    assert "next_eligible_time" in error_info_of(too_soon).metadata
    clock.advance(days=2)
    assert open_account(limits, customer_id="cust-poor").account.status == (
        pb.ACCOUNT_STATUS_ACTIVE
    )


def test_simultaneous_applications_of_one_customer_give_one_line(limits):
    start = threading.Barrier(4)
    answers: list = []

    def apply() -> None:
        start.wait()
        try:
            answers.append(open_account(limits, customer_id="cust-race").account.account_id)
        except grpc.RpcError as error:
            answers.append(error.code())

    threads = [threading.Thread(target=apply) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [a for a in answers if isinstance(a, str)]
    assert len(lines) == 1, answers
    assert [a for a in answers if not isinstance(a, str)] == [grpc.StatusCode.ALREADY_EXISTS] * 3


# -- decisions stand on the platform's own data -------------------------------------------------


def test_the_caller_cannot_supply_the_behaviour_that_is_scored(limits, clock):
    for name in ("RequestIncreaseRequest", "ReviewAccountRequest", "RequestReopenRequest"):
        proto = descriptor_pb2.DescriptorProto()
        pb.DESCRIPTOR.message_types_by_name[name].CopyToProto(proto)
        assert "features" not in {f.name for f in proto.field}
        assert "features" in proto.reserved_name
    account_id = open_account(limits).account.account_id
    clock.advance(days=200)
    report(limits, signal(account_id, "behaviour_rescored", risk=risk(clock.now, RISKY_BEHAVIOUR)))
    declined = limits.RequestIncrease(
        pb.RequestIncreaseRequest(
            request_id=rid(), account_id=account_id, monthly_income=cny(50_000)
        ),
        timeout=10,
    )
    assert not declined.approved
    assert declined.event.reasons[0].code == "POLICY_RISK_NOT_IMPROVED"


def test_a_year_old_profile_is_no_fresh_score(limits, clock):
    account_id = open_account(limits).account.account_id
    report(limits, signal(account_id, "behaviour_rescored", risk=risk(clock.now)))
    clock.advance(days=365)
    answer = limits.RequestIncrease(
        pb.RequestIncreaseRequest(
            request_id=rid(), account_id=account_id, monthly_income=cny(50_000)
        ),
        timeout=10,
    )
    assert not answer.approved  # a decision the customer can read, not an error
    assert [r.code for r in answer.event.reasons] == ["POLICY_NO_RECENT_HISTORY"]
    assert answer.event.reasons[0].texts["en"] == "Not enough recent repayment history"
    assert not account_of(limits, account_id).risk.fresh
    reviewed = limits.ReviewAccount(
        pb.ReviewAccountRequest(request_id=rid(), account_id=account_id), timeout=10
    )
    assert reviewed.event.type == pb.LIMIT_EVENT_TYPE_REVIEWED_UNCHANGED


def test_a_risk_report_missing_its_time_or_an_unknown_signal_type_is_invalid(limits):
    account_id = open_account(limits).account.account_id
    bad = pb.Signal(
        signal_id=rid(), account_id=account_id, type=99, severity=pb.SIGNAL_SEVERITY_LOW,
        risk=pb.RiskReport(profile={"utilisation": float("nan")}),
    )  # fmt: skip
    error = failed(limits.ReportSignals, pb.ReportSignalsRequest(signals=[bad]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in violations_of(error)} == {
        "signals[0].type",
        "signals[0].risk.profile_time",
        "signals[0].risk.profile[utilisation]",
    }


# -- every state has its exits -------------------------------------------------------------------


def test_a_cured_customer_leaves_the_watchlist_after_the_clean_period_and_is_rewarded(
    limits, clock
):
    account_id = open_account(limits).account.account_id  # prime: 5,000 yuan
    report(limits, past_due(account_id, 1, clock.now))
    assert account_of(limits, account_id).status == pb.ACCOUNT_STATUS_WATCHLIST
    clock.advance(days=5)
    report(limits, signal(account_id, "delinquency_cured", risk=risk(clock.now)))
    watched = account_of(limits, account_id)
    (watchlist,) = [c for c in watched.risk.conditions if c.type == pb.CONDITION_TYPE_WATCHLIST]
    assert watchlist.exit["en"] and watchlist.exit["zh-CN"]
    assert (
        watchlist.earliest_exit_time.ToDatetime().date().isoformat() == "2027-02-25"
    )  # cure + 90 days

    outcomes = []
    for _ in range(6):  # monthly on-time repayments, each with monitoring's fresh report
        clock.advance(days=30)
        outcomes += report(
            limits,
            signal(
                account_id,
                "on_time_repayment",
                loan_id="loan-1",
                risk=risk(clock.now, band="A"),
            ),  # fmt: skip
        )
    types = [e.type for e in history(limits, account_id)]
    assert pb.LIMIT_EVENT_TYPE_WATCHLIST_LIFTED in types
    lifted = next(e for e in history(limits, account_id) if e.type == types[types.index(
        pb.LIMIT_EVENT_TYPE_WATCHLIST_LIFTED)])  # fmt: skip
    assert lifted.reasons[0].code == "POLICY_CLEAN_PERIOD"
    assert outcomes[-1].event.type == pb.LIMIT_EVENT_TYPE_INCREASED  # rewarded again
    account = account_of(limits, account_id)
    assert account.status == pb.ACCOUNT_STATUS_ACTIVE
    assert account.credit_line.minor_units == 700_000


def test_an_anomaly_blocks_reopening_until_an_operator_resolves_it(limits, clock):
    account_id = open_account(limits).account.account_id
    report(
        limits,
        signal(account_id, "abnormal_transaction", pb.SIGNAL_SEVERITY_HIGH, risk=risk(clock.now)),
    )
    assert "CONDITION_TYPE_ANOMALY_OPEN" in conditions(account_of(limits, account_id))
    clock.advance(days=100)
    report(limits, signal(account_id, "on_time_repayment", risk=risk(clock.now)))
    reopen = pb.RequestReopenRequest(request_id=rid(), account_id=account_id)
    refused = limits.RequestReopen(reopen, timeout=10)
    assert [r.code for r in refused.event.reasons] == ["POLICY_OPEN_ANOMALY"]

    resolved = limits.ResolveAnomaly(
        pb.ResolveAnomalyRequest(request_id=rid(), account_id=account_id, reason="card stolen"),
        timeout=5,
    ).account
    assert "CONDITION_TYPE_ANOMALY_OPEN" not in conditions(resolved)
    assert history(limits, account_id)[0].type == pb.LIMIT_EVENT_TYPE_ANOMALY_RESOLVED
    clock.advance(days=31)  # the cool-off after the declined request
    report(limits, signal(account_id, "on_time_repayment", risk=risk(clock.now)))
    reopen.request_id = rid()
    assert limits.RequestReopen(reopen, timeout=10).reopened


def test_a_reopening_stage_uses_its_own_line_even_below_what_is_drawn(limits, clock):
    account_id = open_account(limits).account.account_id
    draw(limits, account_id, 640)
    report(limits, past_due(account_id, 90, clock.now))
    clock.advance(days=100)
    report(
        limits,
        signal(account_id, "delinquency_cured", risk=risk(clock.now)),
        signal(account_id, "on_time_repayment", risk=risk(clock.now)),
    )
    reopened = limits.RequestReopen(
        pb.RequestReopenRequest(request_id=rid(), account_id=account_id), timeout=10
    )
    assert reopened.reopened
    account = reopened.account
    assert (account.reopening_stage, account.credit_line.minor_units) == (1, 20_000)
    assert account.available_credit.minor_units == 0  # 640 drawn over a 200-yuan stage line
    assert {"CONDITION_TYPE_OVER_LINE", "CONDITION_TYPE_REOPENING_STAGE"} <= conditions(account)


# -- appeals decide on the account as it is now ----------------------------------------------


def test_reversing_an_old_reduction_never_resurrects_a_line_closed_since(limits, clock):
    account_id = open_account(limits).account.account_id
    draw(limits, account_id, 1_000)
    (cut,) = report(
        limits,
        signal(account_id, "income_decline", pb.SIGNAL_SEVERITY_MEDIUM, risk=risk(clock.now)),
    )
    appeal = limits.FileAppeal(
        pb.FileAppealRequest(
            request_id=rid(),
            account_id=account_id,
            event_id=cut.event.event_id,
            statement="my income is back",
        ),  # fmt: skip
        timeout=5,
    ).appeal
    clock.advance(days=90)
    report(limits, past_due(account_id, 90, clock.now))
    resolved = limits.ResolveAppeal(
        pb.ResolveAppealRequest(
            request_id=rid(), appeal_id=appeal.appeal_id, reverse=True, resolution="income ok"
        ),
        timeout=5,
    )
    assert resolved.appeal.status == pb.APPEAL_STATUS_REVERSED
    assert resolved.event.type == pb.LIMIT_EVENT_TYPE_APPEAL_REVERSED
    account = account_of(limits, account_id)
    assert account.status == pb.ACCOUNT_STATUS_CLOSED
    assert account.available_credit.minor_units == 0
    assert account.credit_line.minor_units == 350_000


@pytest.mark.parametrize("kind", ["on_time_repayment", "delinquency_cured", "behaviour_rescored"])
def test_positive_signals_are_no_policy_action(limits, clock, kind):
    account_id = open_account(limits).account.account_id
    (outcome,) = report(limits, signal(account_id, kind, risk=risk(clock.now)))
    assert not outcome.HasField("event")


def test_a_late_delivered_backlog_lifts_no_watchlist_before_its_clean_period(limits, clock):
    """Exits that time opens are judged at each signal's own event time."""
    account_id = open_account(limits).account.account_id
    start = clock.now
    report(limits, past_due(account_id, 1, start, detect_time=timestamp(start)))
    report(limits, signal(account_id, "delinquency_cured", risk=risk(start),
                          detect_time=timestamp(start)))  # fmt: skip
    clock.advance(days=200)  # the backlog below arrives long after it happened
    early = start + timedelta(days=30)
    report(limits, signal(account_id, "on_time_repayment", risk=risk(early),
                          detect_time=timestamp(early)))  # fmt: skip
    assert account_of(limits, account_id).status == pb.ACCOUNT_STATUS_WATCHLIST
    clean = start + timedelta(days=95)
    report(limits, signal(account_id, "on_time_repayment", risk=risk(clean),
                          detect_time=timestamp(clean)))  # fmt: skip
    assert account_of(limits, account_id).status == pb.ACCOUNT_STATUS_ACTIVE


def test_a_hardship_arrangement_ends_with_its_event_and_draws_resume(limits, clock):
    account_id = open_account(limits).account.account_id
    draw(limits, account_id, 1_200)
    clock.advance(days=300)
    enrolled = limits.EnrollHardship(
        pb.EnrollHardshipRequest(request_id=rid(), account_id=account_id, term_months=3),
        timeout=5,
    ).account
    assert "CONDITION_TYPE_HARDSHIP" in conditions(enrolled)
    assert enrolled.available_credit.minor_units == 0
    clock.advance(days=95)
    assert draw(limits, account_id, 100).account.drawn.minor_units == 130_000
    (ended,) = [
        e for e in history(limits, account_id) if e.type == pb.LIMIT_EVENT_TYPE_HARDSHIP_ENDED
    ]
    assert ended.reasons[0].code == "POLICY_HARDSHIP_ENDED"

"""LimitsService over real servers (limits, scoring) and real databases (SQLite, PostgreSQL)."""

import threading
import uuid

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from creditline.limits.v1 import limits_service_pb2 as pb
from creditline.limits.v1 import limits_service_pb2_grpc
from creditline.type.v1 import money_pb2, risk_pb2, signal_pb2
from services.common.errors import violations_of
from tests.scoring.helpers import to_value
from tests.servers import start_scoring

GOOD_APPLICANT = {  # band A: prime, a 5,000-yuan first line
    "duration_months": 12, "credit_amount": 2000, "checking_account": "none",
    "credit_history": "critical_or_other_credits", "purpose": "car_used",
    "savings": "1000_or_more", "employment_since": "7_years_or_more", "installment_rate": 2,
    "other_debtors": "guarantor", "residence_since": 4, "property": "real_estate",
    "other_installment_plans": "none", "housing": "own", "existing_credits": 1, "job": "skilled",
    "dependants": 1, "telephone": "registered",
}  # fmt: skip
POOR_APPLICANT = {  # band E: declined
    **GOOD_APPLICANT, "duration_months": 48, "credit_amount": 9000,
    "checking_account": "negative", "credit_history": "past_delays", "purpose": "car_new",
    "savings": "below_100", "employment_since": "below_1_year", "installment_rate": 4,
    "other_debtors": "none", "residence_since": 1, "property": "unknown_or_none",
    "other_installment_plans": "bank", "housing": "rent", "existing_credits": 2,
    "job": "unskilled_resident", "telephone": "none",
}  # fmt: skip
CLEAN_BEHAVIOUR = {  # band A
    "utilisation": 0.2, "days_past_due": 0, "max_dpd_3m": 0, "max_dpd_6m": 0, "max_dpd_12m": 0,
    "dpd30_episodes_12m": 0, "dpd60_episodes_12m": 0, "dpd90_episodes_12m": 0,
    "on_time_streak": 12, "partial_payments_6m": 0, "inquiries_7d": 0, "inquiries_30d": 0,
    "months_on_book": 30, "income_change": 0.05, "debt_to_income": 0.2,
}  # fmt: skip


def cny(yuan: float) -> money_pb2.Money:
    return money_pb2.Money(currency_code="CNY", minor_units=round(yuan * 100))


def rid() -> str:
    return uuid.uuid4().hex


def features(values: dict):
    return {name: to_value(value) for name, value in values.items()}


def open_account(stub, applicant=GOOD_APPLICANT, customer_id=None) -> pb.OpenAccountResponse:
    """A new customer's application (or `customer_id`'s)."""
    return stub.OpenAccount(
        pb.OpenAccountRequest(
            request_id=rid(),
            customer_id=customer_id or f"cust-{rid()}",
            features=features(applicant),
            monthly_income=cny(20_000),
            monthly_debt_payments=cny(1_000),
        ),
        timeout=10,
    )


def timestamp(moment) -> Timestamp:
    proto = Timestamp()
    proto.FromDatetime(moment)
    return proto


def risk(at, profile=CLEAN_BEHAVIOUR, days_past_due=0, band=None) -> pb.RiskReport:
    """Monitoring's report of the account's behaviour at `at` (event time)."""
    report = pb.RiskReport(
        profile={**profile, "days_past_due": days_past_due},
        profile_time=timestamp(at),
        days_past_due=days_past_due,
    )
    if band:
        report.risk_band = risk_pb2.RiskBand.Value(f"RISK_BAND_{band}")
        report.score_time.CopyFrom(timestamp(at))
    return report


def signal(account_id, kind, severity=pb.SIGNAL_SEVERITY_INFO, signal_id=None, **fields):
    """A signal of `kind` ("days_past_due", "on_time_repayment", ...) as monitoring sends it."""
    return pb.Signal(
        signal_id=signal_id or rid(),
        account_id=account_id,
        type=signal_pb2.SignalType.Value(f"SIGNAL_TYPE_{kind.upper()}"),
        severity=severity,
        **fields,
    )


def report(stub, *signals) -> list[pb.SignalOutcome]:
    return list(stub.ReportSignals(pb.ReportSignalsRequest(signals=signals), timeout=10).outcomes)


def past_due(account_id, days, at, loan_id="loan-1", **fields) -> pb.Signal:
    """The days-past-due signal monitoring raises at a threshold, with its risk report."""
    severity = {1: pb.SIGNAL_SEVERITY_LOW, 30: pb.SIGNAL_SEVERITY_MEDIUM,
                60: pb.SIGNAL_SEVERITY_HIGH}.get(days, pb.SIGNAL_SEVERITY_CRITICAL)  # fmt: skip
    return signal(
        account_id, "days_past_due", severity, days_past_due=days, loan_id=loan_id,
        risk=risk(at, days_past_due=days), **fields,
    )  # fmt: skip


def draw(stub, account_id, yuan, purpose="consumption", **kw):
    request = pb.DrawRequest(
        request_id=kw.pop("request_id", rid()), account_id=account_id, amount=cny(yuan),
        purpose=purpose, loan_id="loan-1", **kw,
    )  # fmt: skip
    return stub.Draw(request, timeout=10)


def failed(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=10)
    return raised.value


# -- opening and reading --------------------------------------------------------------------


def test_open_a_tiered_first_line_and_read_it_back(limits):
    opened = open_account(limits)
    account = opened.account
    assert account.status == pb.ACCOUNT_STATUS_ACTIVE
    assert (account.tier, account.credit_line.minor_units) == ("prime", 500_000)
    assert account.available_credit.minor_units == 500_000
    assert opened.event.type == pb.LIMIT_EVENT_TYPE_OPENED
    assert opened.event.model_name == "application" and opened.event.policy_version
    # Priced by its tier: prime lines at 7.2% a year, on the account and in the record.
    assert account.annual_rate_basis_points == opened.event.annual_rate_basis_points == 720

    read = limits.GetAccount(pb.GetAccountRequest(account_id=account.account_id), timeout=5)
    assert read.account == account


def test_a_declined_application_carries_reasons_in_both_languages(limits):
    declined = open_account(limits, POOR_APPLICANT)
    assert declined.account.status == pb.ACCOUNT_STATUS_DECLINED
    event = declined.event
    assert event.type == pb.LIMIT_EVENT_TYPE_DECLINED and event.adverse
    assert event.reasons[0].code == "POLICY_DECLINED_RISK_BAND"
    assert 1 < len(event.reasons) <= 4
    for reason in event.reasons:
        assert reason.texts["en"] and reason.texts["zh-CN"]
    assert event.notice.texts["zh-CN"]


def test_history_is_newest_first_and_paginated(limits, clock):
    account_id = open_account(limits).account.account_id
    for _ in range(3):
        clock.advance(seconds=1)
        limits.FreezeAccount(
            pb.FreezeAccountRequest(request_id=rid(), account_id=account_id, reason="check"),
            timeout=5,
        )
        clock.advance(seconds=1)
        limits.UnfreezeAccount(
            pb.UnfreezeAccountRequest(request_id=rid(), account_id=account_id, reason="ok"),
            timeout=5,
        )
    seen, token = [], ""
    while True:
        page = limits.ListLimitEvents(
            pb.ListLimitEventsRequest(account_id=account_id, page_size=3, page_token=token),
            timeout=5,
        )
        seen.extend(page.events)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 7
    assert seen[-1].type == pb.LIMIT_EVENT_TYPE_OPENED
    assert seen[0].type == pb.LIMIT_EVENT_TYPE_UNFROZEN
    assert len({e.event_id for e in seen}) == 7


# -- the ledger ----------------------------------------------------------------------------


def test_draw_and_repay_move_the_available_credit(limits):
    account_id = open_account(limits).account.account_id
    assert draw(limits, account_id, 1_200).account.available_credit.minor_units == 380_000
    repaid = limits.Repay(
        pb.RepayRequest(request_id=rid(), account_id=account_id, amount=cny(200)), timeout=5
    )
    assert repaid.account.drawn.minor_units == 100_000
    with pytest.raises(grpc.RpcError) as raised:
        draw(limits, account_id, 4_001)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_prohibited_purpose_is_refused(limits):
    account_id = open_account(limits).account.account_id
    with pytest.raises(grpc.RpcError) as raised:
        draw(limits, account_id, 100, purpose="securities")
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "securities" in raised.value.details()


def test_a_frozen_line_refuses_draws_with_the_reason(limits):
    account_id = open_account(limits).account.account_id
    limits.FreezeAccount(
        pb.FreezeAccountRequest(request_id=rid(), account_id=account_id, reason="fraud check"),
        timeout=5,
    )
    with pytest.raises(grpc.RpcError) as raised:
        draw(limits, account_id, 100)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "frozen" in raised.value.details()


def test_a_repeated_request_id_returns_the_first_answer_and_draws_once(limits):
    account_id = open_account(limits).account.account_id
    first = draw(limits, account_id, 300, request_id="draw-1")
    again = draw(limits, account_id, 300, request_id="draw-1")
    assert again == first
    current = limits.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=5)
    assert current.account.drawn.minor_units == 30_000
    with pytest.raises(grpc.RpcError) as raised:
        draw(limits, account_id, 500, request_id="draw-1")
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_a_stale_etag_is_aborted(limits):
    account = open_account(limits).account
    draw(limits, account.account_id, 100)
    with pytest.raises(grpc.RpcError) as raised:
        draw(limits, account.account_id, 100, etag=account.etag)
    assert raised.value.code() == grpc.StatusCode.ABORTED
    current = limits.GetAccount(pb.GetAccountRequest(account_id=account.account_id), timeout=5)
    assert draw(limits, account.account_id, 100, etag=current.account.etag)


def test_concurrent_draws_from_several_clients_never_overdraw(limits):
    account_id = open_account(limits).account.account_id  # 5,000 yuan
    results: list[int] = []
    errors: list[grpc.StatusCode] = []
    lock = threading.Lock()
    channels = [grpc.insecure_channel(limits.address) for _ in range(4)]

    def client(n: int) -> None:
        stub = limits_service_pb2_grpc.LimitsServiceStub(channels[n % 4])
        for i in range(25):
            amount = 10 + (n * 7 + i * 13) % 90  # 10 to 99 yuan: 200 draws ask for ~11,000
            try:
                draw(stub, account_id, amount)
                with lock:
                    results.append(amount * 100)
            except grpc.RpcError as error:
                with lock:
                    errors.append(error.code())

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for channel in channels:
        channel.close()

    assert set(errors) <= {grpc.StatusCode.FAILED_PRECONDITION}, errors
    assert len(results) + len(errors) == 200
    account = limits.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=5).account
    assert account.drawn.minor_units == sum(results) <= 500_000
    assert account.available_credit.minor_units == 500_000 - sum(results)
    assert errors, "the draws asked for more than the line: some must be refused"


# -- increases and scoring -----------------------------------------------------------------


def test_an_increase_after_the_waiting_period(limits, clock):
    account_id = open_account(limits).account.account_id
    report(limits, signal(account_id, "behaviour_rescored", risk=risk(clock.now)))
    request = pb.RequestIncreaseRequest(
        request_id=rid(), account_id=account_id,
        monthly_income=cny(20_000), monthly_debt_payments=cny(1_000),
    )  # fmt: skip
    too_new = limits.RequestIncrease(request, timeout=10)
    assert not too_new.approved
    assert [r.code for r in too_new.event.reasons] == ["POLICY_MONTHS_ON_BOOK"]
    assert too_new.improvements and too_new.next_eligible_time.seconds > 0

    clock.advance(days=120)
    report(limits, signal(account_id, "on_time_repayment", risk=risk(clock.now)))
    request.request_id = rid()
    approved = limits.RequestIncrease(request, timeout=10)
    assert approved.approved
    assert approved.account.credit_line.minor_units == 700_000
    history = limits.ListLimitEvents(pb.ListLimitEventsRequest(account_id=account_id), timeout=5)
    assert [e.type for e in history.events][:2] == [
        pb.LIMIT_EVENT_TYPE_INCREASED,
        pb.LIMIT_EVENT_TYPE_INCREASE_DECLINED,
    ]


def test_scoring_down_refuses_increases_but_signals_still_apply(start_limits, clock):
    own_scoring, _ = start_scoring()
    limits = start_limits(own_scoring.port)
    account_id = open_account(limits).account.account_id
    clock.advance(days=120)
    report(limits, signal(account_id, "on_time_repayment", risk=risk(clock.now)))
    own_scoring.stop(0)
    request = pb.RequestIncreaseRequest(
        request_id=rid(), account_id=account_id, monthly_income=cny(20_000)
    )
    assert failed(limits.RequestIncrease, request).code() == grpc.StatusCode.UNAVAILABLE
    reported = report(limits, past_due(account_id, 30, clock.now))
    assert reported[0].event.type == pb.LIMIT_EVENT_TYPE_REDUCED
    account = limits.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=5).account
    assert account.credit_line.minor_units == 250_000


# -- signals, operators, reopening, hardship, preferences, appeals -------------------------


def test_signals_are_applied_once_by_signal_id(limits, clock):
    account_id = open_account(limits).account.account_id
    request = pb.ReportSignalsRequest(
        signals=[past_due(account_id, 60, clock.now, signal_id="sig-60")]
    )
    first = limits.ReportSignals(request, timeout=10).outcomes[0]
    again = limits.ReportSignals(request, timeout=10).outcomes[0]
    assert first.event.type == pb.LIMIT_EVENT_TYPE_FROZEN and not first.duplicate
    assert again.duplicate and again.event.event_id == first.event.event_id
    history = limits.ListLimitEvents(pb.ListLimitEventsRequest(account_id=account_id), timeout=5)
    assert [e.type for e in history.events].count(pb.LIMIT_EVENT_TYPE_FROZEN) == 1


def test_a_closed_line_reopens_in_stages(limits, clock):
    account_id = open_account(limits).account.account_id
    report(limits, past_due(account_id, 90, clock.now))
    reopen = pb.RequestReopenRequest(request_id=rid(), account_id=account_id)
    refused = limits.RequestReopen(reopen, timeout=10)
    assert not refused.reopened
    assert "POLICY_REOPEN_TOO_SOON" in [r.code for r in refused.event.reasons]

    clock.advance(days=100)
    report(
        limits,
        signal(account_id, "delinquency_cured", risk=risk(clock.now)),
        signal(account_id, "on_time_repayment", loan_id="loan-1", risk=risk(clock.now)),
    )
    reopen.request_id = rid()
    reopened = limits.RequestReopen(reopen, timeout=10)
    assert reopened.reopened, [r.code for r in reopened.event.reasons]
    assert reopened.account.reopening_stage == 1
    assert reopened.account.credit_line.minor_units == 20_000

    for _ in range(3):
        clock.advance(days=30)
        (outcome,) = report(limits, signal(account_id, "on_time_repayment", risk=risk(clock.now)))
    assert outcome.event.type == pb.LIMIT_EVENT_TYPE_REOPENING_STAGE_ADVANCED
    account = limits.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=5).account
    assert (account.reopening_stage, account.credit_line.minor_units) == (2, 250_000)


def test_hardship_and_preferences(limits, clock):
    account_id = open_account(limits).account.account_id
    draw(limits, account_id, 1_200)
    too_new = failed(
        limits.EnrollHardship,
        pb.EnrollHardshipRequest(request_id=rid(), account_id=account_id, term_months=12),
    )
    assert too_new.code() == grpc.StatusCode.FAILED_PRECONDITION
    clock.advance(days=300)
    enrolled = limits.EnrollHardship(
        pb.EnrollHardshipRequest(request_id=rid(), account_id=account_id, term_months=12),
        timeout=5,
    ).account
    # 1,200 yuan over 12 months at the prime tier's 7.2% a year.
    assert enrolled.hardship.monthly_instalment.minor_units == 10_395
    assert enrolled.annual_rate_basis_points == 720
    assert enrolled.available_credit.minor_units == 0

    capped = limits.SetPreferences(
        pb.SetPreferencesRequest(
            request_id=rid(),
            account_id=account_id,
            customer_cap=cny(2_000),
            automatic_increases=False,
        ),  # fmt: skip
        timeout=5,
    ).account
    assert capped.customer_cap.minor_units == 200_000 and not capped.automatic_increases


def test_an_appeal_can_reverse_a_decision(limits):
    account_id = open_account(limits).account.account_id
    frozen = limits.FreezeAccount(
        pb.FreezeAccountRequest(request_id=rid(), account_id=account_id, reason="suspicion"),
        timeout=5,
    )
    event_id = (
        limits.ListLimitEvents(pb.ListLimitEventsRequest(account_id=account_id), timeout=5)
        .events[0]
        .event_id
    )
    assert frozen.account.status == pb.ACCOUNT_STATUS_FROZEN
    appeal = limits.FileAppeal(
        pb.FileAppealRequest(
            request_id=rid(),
            account_id=account_id,
            event_id=event_id,
            statement="I travelled abroad",
        ),  # fmt: skip
        timeout=5,
    ).appeal
    listed = limits.ListAppeals(pb.ListAppealsRequest(status=pb.APPEAL_STATUS_OPEN), timeout=5)
    assert appeal.appeal_id in [a.appeal_id for a in listed.appeals]
    resolved = limits.ResolveAppeal(
        pb.ResolveAppealRequest(
            request_id=rid(), appeal_id=appeal.appeal_id, reverse=True, resolution="verified"
        ),
        timeout=5,
    )
    assert resolved.appeal.status == pb.APPEAL_STATUS_REVERSED
    assert resolved.event.type == pb.LIMIT_EVENT_TYPE_APPEAL_REVERSED
    account = limits.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=5).account
    assert account.status == pb.ACCOUNT_STATUS_ACTIVE
    again = failed(
        limits.ResolveAppeal,
        pb.ResolveAppealRequest(
            request_id=rid(), appeal_id=appeal.appeal_id, reverse=False, resolution="x"
        ),
    )
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION


# -- bad input: INVALID_ARGUMENT with field violations, every RPC ----------------------------

BAD_REQUESTS = [
    ("OpenAccount", pb.OpenAccountRequest(),
     {"request_id", "customer_id", "features", "monthly_income"}),
    ("GetAccount", pb.GetAccountRequest(), {"account_id"}),
    ("ListLimitEvents", pb.ListLimitEventsRequest(account_id="a", page_token="???"),
     {"page_token"}),
    ("Draw", pb.DrawRequest(), {"request_id", "account_id", "purpose", "amount"}),
    ("Repay", pb.RepayRequest(), {"request_id", "account_id", "amount"}),
    ("RequestIncrease", pb.RequestIncreaseRequest(), {"request_id", "account_id"}),
    ("ReviewAccount", pb.ReviewAccountRequest(), {"request_id", "account_id"}),
    ("RequestReopen", pb.RequestReopenRequest(), {"request_id", "account_id"}),
    ("ReportSignals", pb.ReportSignalsRequest(), {"signals"}),
    ("ReportSignals", pb.ReportSignalsRequest(signals=[pb.Signal()]),
     {"signals[0].signal_id", "signals[0].account_id", "signals[0].type",
      "signals[0].severity"}),
    ("ReportSignals", pb.ReportSignalsRequest(signals=[pb.Signal(
        signal_id="s", account_id="a", type=signal_pb2.SIGNAL_TYPE_DAYS_PAST_DUE,
        severity=pb.SIGNAL_SEVERITY_LOW, risk=pb.RiskReport(days_past_due=-1))]),
     {"signals[0].days_past_due", "signals[0].risk.profile_time",
      "signals[0].risk.days_past_due"}),
    ("ResolveAnomaly", pb.ResolveAnomalyRequest(), {"request_id", "account_id", "reason"}),
    ("FreezeAccount", pb.FreezeAccountRequest(), {"request_id", "account_id", "reason"}),
    ("UnfreezeAccount", pb.UnfreezeAccountRequest(), {"request_id", "account_id", "reason"}),
    ("CloseAccount", pb.CloseAccountRequest(), {"request_id", "account_id", "reason"}),
    ("EnrollHardship", pb.EnrollHardshipRequest(), {"request_id", "account_id"}),
    ("SetPreferences", pb.SetPreferencesRequest(), {"request_id", "account_id"}),
    ("FileAppeal", pb.FileAppealRequest(),
     {"request_id", "account_id", "event_id", "statement"}),
    ("ListAppeals", pb.ListAppealsRequest(page_size=-1), {"page_size"}),
    ("ResolveAppeal", pb.ResolveAppealRequest(), {"request_id", "appeal_id", "resolution"}),
]  # fmt: skip


@pytest.mark.parametrize(("method", "request_", "fields"), BAD_REQUESTS)
def test_bad_input_names_every_field(limits, method, request_, fields):
    error = failed(getattr(limits, method), request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert {v.field for v in violations_of(error)} == fields


def test_bad_amounts_and_features(limits):
    account_id = open_account(limits).account.account_id
    error = failed(limits.Draw, pb.DrawRequest(
        request_id=rid(), account_id=account_id, purpose="consumption",
        amount=money_pb2.Money(currency_code="USD", minor_units=-5),
    ))  # fmt: skip
    assert {v.field for v in violations_of(error)} == {
        "amount.currency_code",
        "amount.minor_units",
    }
    bad_features = features({**GOOD_APPLICANT, "credit_amount": -1})
    error = failed(limits.OpenAccount, pb.OpenAccountRequest(
        request_id=rid(), customer_id="c", features=bad_features, monthly_income=cny(100),
    ))  # fmt: skip
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in violations_of(error)] == ["features[credit_amount]"]


def test_unknown_accounts_are_not_found(limits):
    error = failed(limits.GetAccount, pb.GetAccountRequest(account_id="nobody"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = failed(limits.Draw, pb.DrawRequest(
        request_id=rid(), account_id="nobody", amount=cny(1), purpose="consumption"))  # fmt: skip
    assert error.code() == grpc.StatusCode.NOT_FOUND

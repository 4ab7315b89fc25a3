"""What limits hears of monitoring's alerts: each reportable kind as a SignalType, with the days
past due and the loan where there are, and the account's behaviour as a RiskReport."""

from datetime import UTC, datetime

from creditline.type.v1 import risk_pb2, signal_pb2
from services.common.errors import Violations
from services.monitoring.converters import events_of
from services.monitoring.delivery import signal_message
from services.monitoring.detection import Raised, ScoredProfile, new_account, process, rescored
from services.monitoring.profile import features
from services.monitoring.rules import REPORTED_TYPES, load_rules, reported_type
from services.monitoring.store import AlertRecord, Delivery
from tests.monitoring.events import Customer, batch

RULES = load_rules()
STORED_AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def alert_of(raised: Raised) -> AlertRecord:
    """The alert the store keeps of `raised`."""
    return AlertRecord(
        seq=1,
        signal_id=raised.signal_id,
        account_id=raised.account_id,
        type=raised.type,
        severity=raised.severity,
        evidence=raised.evidence,
        profile=raised.profile,
        risk_band=raised.risk_band,
        event_id=raised.event_id,
        detected_at=datetime.fromtimestamp(raised.detected_at, UTC),
        created_at=STORED_AT,
        rules_version=RULES.version,
        delivery=Delivery.pending,
        delivery_attempts=0,
        delivery_error="",
    )


def test_every_kind_the_rules_report_has_a_signal_type():
    reported = {
        kind: reported_type(kind) for kind in RULES.signal_types() if RULES.signals[kind].report
    }
    assert signal_pb2.SIGNAL_TYPE_UNSPECIFIED not in reported.values(), reported
    assert reported["days_past_due_30"] == signal_pb2.SIGNAL_TYPE_DAYS_PAST_DUE
    assert reported["behaviour_rescored"] == signal_pb2.SIGNAL_TYPE_BEHAVIOUR_RESCORED
    # Any threshold a rules file may set is a DAYS_PAST_DUE signal.
    assert reported_type("days_past_due_45") == signal_pb2.SIGNAL_TYPE_DAYS_PAST_DUE
    # Every type of the contract is what some kind is reported as, each kind its own.
    types = list(REPORTED_TYPES.values())
    assert len(set(types)) == len(types)
    assert set(types) == set(signal_pb2.SignalType.values()) - {signal_pb2.SIGNAL_TYPE_UNSPECIFIED}
    # A kind limits does not know is not reportable (the rules refuse `report: true` for it).
    assert reported_type("on_time_streak") == signal_pb2.SIGNAL_TYPE_UNSPECIFIED


def test_events_naming_a_loan_carry_it():
    customer = Customer("acct-loans")
    messages = [
        customer.opened(),
        customer.drawn(1_000, loan_id="loan-2"),
        customer.due(350),
        customer.repaid(350),
        customer.missed(),
        customer.inquiry(),
    ]
    events = events_of(batch(*messages), "CNY", Violations())
    assert [e.loan_id for e in events] == ["", "loan-2", "loan-1", "loan-1", "loan-1", ""]


def test_a_days_past_due_signal_carries_the_days_the_loan_and_the_risk_report():
    customer = Customer("acct-late")
    opened, drawn, missed = events_of(
        batch(customer.opened(), customer.drawn(1_000), customer.advance(days=40).missed(days=30)),
        "CNY",
        Violations(),
    )
    state = new_account(opened)
    process(state, opened, RULES)
    process(state, drawn, RULES)
    state.score = {"risk_band": "B"}  # an older score: its band is not reported here
    raised = process(state, missed, RULES)
    assert [r.type for r in raised] == ["days_past_due_1", "days_past_due_30"]
    late = raised[1]
    late.profile = features(state)  # as ingestion does
    alert = alert_of(late)

    signal = signal_message(alert)
    assert signal.type == signal_pb2.SIGNAL_TYPE_DAYS_PAST_DUE
    assert (signal.days_past_due, signal.loan_id) == (30, "loan-1")
    assert (signal.signal_id, signal.account_id) == (late.signal_id, "acct-late")
    assert signal.detect_time.ToDatetime(UTC) == alert.detected_at
    assert dict(signal.evidence) == late.evidence
    risk = signal.risk
    assert dict(risk.profile) == late.profile
    assert risk.HasField("profile_time")
    assert risk.profile_time.ToDatetime(UTC) == alert.detected_at == customer.at
    assert risk.days_past_due == 30
    assert risk.risk_band == risk_pb2.RISK_BAND_UNSPECIFIED and not risk.HasField("score_time")


def first_rescoring(customer: Customer) -> tuple[ScoredProfile, Raised]:
    """An account just opened, scored C: the profile scored and its `behaviour_rescored`."""
    (opened,) = events_of(batch(customer.opened()), "CNY", Violations())
    state = new_account(opened)
    process(state, opened, RULES)
    scored = ScoredProfile(state.profile_version, state.last_event_at, features(state))
    (report,) = rescored(state, scored, "C", "1.0.0", RULES)
    return scored, report


def test_a_rescoring_reports_the_band_scored_and_when():
    customer = Customer("acct-rescored")
    scored, report = first_rescoring(customer)

    signal = signal_message(alert_of(report))
    assert signal.type == signal_pb2.SIGNAL_TYPE_BEHAVIOUR_RESCORED
    assert (signal.days_past_due, signal.loan_id) == (0, "")
    risk = signal.risk
    assert dict(risk.profile) == scored.features
    assert risk.profile_time.ToDatetime(UTC) == customer.at
    assert risk.risk_band == risk_pb2.RISK_BAND_C
    assert risk.score_time.ToDatetime(UTC) == STORED_AT


def test_an_alert_of_a_kind_limits_does_not_know_goes_unspecified_for_limits_to_refuse():
    _, report = first_rescoring(Customer("acct-old"))
    report.type = "a_kind_of_older_rules"
    assert signal_message(alert_of(report)).type == signal_pb2.SIGNAL_TYPE_UNSPECIFIED

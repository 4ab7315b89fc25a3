"""Between monitoring's messages and its domain: events checked field by field on the way in,
alerts and account risk on the way out."""

from datetime import UTC, datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from creditline.type.v1 import risk_pb2
from creditline.type.v1.money_pb2 import Money
from services.common.errors import Violations
from services.monitoring.ingestion import BatchResult, Outcome
from services.monitoring.profile import Event, EventKind, Timing
from services.monitoring.rules import Severity
from services.monitoring.store import AlertQuery, AlertRecord, Delivery

MAX_BATCH = 5_000
MAX_ID_LENGTH = 128
MAX_DAYS_PAST_DUE = 3650
KINDS = tuple(pb.RepaymentEvent.DESCRIPTOR.oneofs_by_name["kind"].fields)
TIMINGS = {
    pb.REPAYMENT_TIMING_ON_TIME: Timing.on_time,
    pb.REPAYMENT_TIMING_LATE: Timing.late,
    pb.REPAYMENT_TIMING_PARTIAL: Timing.partial,
}
TIMING_VALUES = {timing: value for value, timing in TIMINGS.items()}
# The events whose body names a loan.
LOAN_EVENTS = frozenset(
    {EventKind.line_drawn, EventKind.instalment_due, EventKind.repayment, EventKind.payment_missed}
)
OUTCOMES = {
    Outcome.applied: pb.EVENT_OUTCOME_APPLIED,
    Outcome.duplicate: pb.EVENT_OUTCOME_DUPLICATE,
    Outcome.out_of_sequence: pb.EVENT_OUTCOME_OUT_OF_SEQUENCE,
}
DELIVERY = {
    Delivery.pending: pb.DELIVERY_STATE_PENDING,
    Delivery.delivered: pb.DELIVERY_STATE_DELIVERED,
    Delivery.rejected: pb.DELIVERY_STATE_REJECTED,
    Delivery.not_reported: pb.DELIVERY_STATE_NOT_REPORTED,
}


def events_of(batch: pb.EventBatch, currency: str, violations: Violations) -> list[Event]:
    """The batch's events, or every problem with them added to `violations`."""
    if not batch.events:
        violations.add("batch.events", "at least one event is required")
    if len(batch.events) > MAX_BATCH:
        violations.add("batch.events", f"at most {MAX_BATCH} events in one batch")
        return []
    return [
        event
        for i, message in enumerate(batch.events)
        if (event := event_of(message, f"batch.events[{i}]", currency, violations)) is not None
    ]


def event_of(message: pb.RepaymentEvent, path: str, currency: str, v: Violations) -> Event | None:
    """The event, or None with its problems added to `v` (fields named under `path`)."""
    require_id(message.event_id, f"{path}.event_id", v)
    require_id(message.account_id, f"{path}.account_id", v)
    if message.sequence < 1:
        v.add(f"{path}.sequence", "required: 1 for the account's first event, then 2, 3, ...")
    if not message.HasField("occurred_at"):
        v.add(f"{path}.occurred_at", "required")
    kind_name = message.WhichOneof("kind")
    if kind_name is None:
        v.add(f"{path}.kind", "one of " + ", ".join(f.name for f in KINDS) + " is required")
        return None
    kind = EventKind(kind_name)
    body = getattr(message, kind_name)
    at = path + "." + kind_name
    amount, income, days, timing = 0, 0, None, None
    loan_id = body.loan_id if kind in LOAN_EVENTS else ""
    if len(loan_id) > MAX_ID_LENGTH:
        v.add(f"{at}.loan_id", f"at most {MAX_ID_LENGTH} characters")
    if kind is EventKind.account_opened:
        amount = _money(body, "credit_line", at, currency, v, positive=False)
        income = _money(body, "monthly_income", at, currency, v, positive=False, required=False)
    elif kind is EventKind.line_drawn:
        amount = _money(body, "amount", at, currency, v)
        if body.term_months < 0:
            v.add(f"{at}.term_months", "must not be negative")
    elif kind is EventKind.instalment_due:
        amount = _money(body, "amount", at, currency, v, positive=False)
    elif kind is EventKind.repayment:
        amount = _money(body, "amount", at, currency, v, positive=False)
        timing = TIMINGS.get(body.timing)
        if timing is None:
            v.add(f"{at}.timing", "required: on time, late or partial")
        days = _days(body.days_past_due_after, f"{at}.days_past_due_after", v)
    elif kind is EventKind.days_past_due_updated:
        days = _days(body.days_past_due, f"{at}.days_past_due", v)
    elif kind is EventKind.payment_missed:
        amount = _money(body, "amount_due", at, currency, v)
        days = _days(body.days_past_due, f"{at}.days_past_due", v)
        if body.days_past_due < 1:
            v.add(f"{at}.days_past_due", "a missed payment is at least 1 day past due")
    elif kind is EventKind.income_updated:
        income = _money(body, "monthly_income", at, currency, v, positive=False)
    elif kind is EventKind.transaction:
        amount = _money(body, "amount", at, currency, v)
    elif kind is EventKind.credit_line_changed:
        amount = _money(body, "credit_line", at, currency, v, positive=False)
    elif kind is EventKind.interest_charged:
        amount = _money(body, "amount", at, currency, v)
    if v:
        return None
    return Event(
        event_id=message.event_id,
        account_id=message.account_id,
        sequence=message.sequence,
        at=message.occurred_at.seconds + message.occurred_at.nanos / 1e9,
        kind=kind,
        amount=amount,
        days_past_due=days,
        timing=timing,
        income=income,
        loan_id=loan_id,
    )


def event_message(event: Event, currency: str) -> pb.RepaymentEvent:
    """The message a producer sends for `event`; monitoring reads it back as the same event
    (the simulator's accounts are replayed to a running service this way)."""

    def money(minor_units: int) -> Money:
        return Money(currency_code=currency, minor_units=minor_units)

    kind, loan_id, amount = event.kind, event.loan_id, event.amount
    days = event.days_past_due or 0
    body: Message
    if kind is EventKind.account_opened:
        body = pb.AccountOpened(credit_line=money(amount))
        if event.income:
            body.monthly_income.CopyFrom(money(event.income))
    elif kind is EventKind.line_drawn:
        body = pb.LineDrawn(loan_id=loan_id, amount=money(amount))
    elif kind is EventKind.instalment_due:
        body = pb.InstalmentDue(loan_id=loan_id, amount=money(amount))
    elif kind is EventKind.repayment:
        assert event.timing is not None, "a repayment has a timing"
        body = pb.Repayment(
            loan_id=loan_id,
            amount=money(amount),
            timing=TIMING_VALUES[event.timing],
            days_past_due_after=days,
        )
    elif kind is EventKind.days_past_due_updated:
        body = pb.DaysPastDueUpdated(days_past_due=days)
    elif kind is EventKind.payment_missed:
        body = pb.PaymentMissed(loan_id=loan_id, amount_due=money(amount), days_past_due=days)
    elif kind is EventKind.credit_inquiry:
        body = pb.CreditInquiry()
    elif kind is EventKind.income_updated:
        body = pb.IncomeUpdated(monthly_income=money(event.income))
    elif kind is EventKind.transaction:
        body = pb.Transaction(amount=money(amount))
    elif kind is EventKind.credit_line_changed:
        body = pb.CreditLineChanged(credit_line=money(amount))
    elif kind is EventKind.account_closed:
        body = pb.AccountClosed()
    else:
        body = pb.InterestCharged(amount=money(amount))
    message = pb.RepaymentEvent(
        event_id=event.event_id,
        account_id=event.account_id,
        sequence=event.sequence,
        occurred_at=timestamp(event.at),
    )
    getattr(message, kind.value).CopyFrom(body)
    return message


def _money(
    body, name: str, path: str, currency: str, v: Violations, *, positive=True, required=True
):
    field = f"{path}.{name}"
    if not body.HasField(name):
        if required:
            v.add(field, "required")
        return 0
    money = getattr(body, name)
    if money.currency_code != currency:
        v.add(f"{field}.currency_code", f"amounts are in {currency}")
    if money.minor_units < 0 or (positive and money.minor_units == 0):
        v.add(f"{field}.minor_units", "must be positive" if positive else "must not be negative")
    return money.minor_units


def _days(days: int, field: str, v: Violations) -> int:
    if not 0 <= days <= MAX_DAYS_PAST_DUE:
        v.add(field, f"between 0 and {MAX_DAYS_PAST_DUE}")
    return days


def require_id(value: str, field: str, v: Violations) -> None:
    if not value:
        v.add(field, "required")
    elif len(value) > MAX_ID_LENGTH:
        v.add(field, f"at most {MAX_ID_LENGTH} characters")


def ack_message(batch_id: str, result: BatchResult) -> pb.BatchAck:
    return pb.BatchAck(
        batch_id=batch_id,
        results=[
            pb.EventResult(
                event_id=r.event_id,
                outcome=OUTCOMES[r.outcome],
                expected_sequence=r.expected_sequence,
            )
            for r in result.results
        ],
        applied=result.count(Outcome.applied),
        duplicates=result.count(Outcome.duplicate),
        out_of_sequence=result.count(Outcome.out_of_sequence),
        signals_raised=len(result.raised),
    )


def alert_query(message: pb.AlertFilter, v: Violations) -> AlertQuery:
    severities = set()
    for i, severity in enumerate(message.severities):
        if severity not in Severity._value2member_map_:
            v.add(f"filter.severities[{i}]", "unknown severity")
        else:
            severities.add(Severity(severity))
    for i, kind in enumerate(message.types):
        if not kind:
            v.add(f"filter.types[{i}]", "must not be empty")
    if len(message.account_id) > MAX_ID_LENGTH:
        v.add("filter.account_id", f"at most {MAX_ID_LENGTH} characters")
    return AlertQuery(frozenset(severities), frozenset(message.types), message.account_id)


def alert_message(alert: AlertRecord) -> pb.Alert:
    return pb.Alert(
        signal_id=alert.signal_id,
        account_id=alert.account_id,
        type=alert.type,
        severity=pb.AlertSeverity.ValueType(alert.severity),  # AlertSeverity shares the numbers
        evidence=alert.evidence,
        event_id=alert.event_id,
        detect_time=timestamp(alert.detected_at),
        create_time=timestamp(alert.created_at),
        rules_version=alert.rules_version,
        risk_band=band_value(alert.risk_band),
        delivery_state=DELIVERY[alert.delivery],
        cursor=str(alert.seq),
    )


def band_value(band: str) -> risk_pb2.RiskBand.ValueType:
    if not band:
        return risk_pb2.RISK_BAND_UNSPECIFIED
    return risk_pb2.RiskBand.Value(f"RISK_BAND_{band}")


def timestamp(value: datetime | float) -> Timestamp:
    stamp = Timestamp()
    if isinstance(value, float | int):
        value = datetime.fromtimestamp(value, UTC)
    stamp.FromDatetime(value)
    return stamp

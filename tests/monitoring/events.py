"""Repayment events as a test writes them: one customer's life, event by event."""

import itertools
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from creditline.type.v1.money_pb2 import Money

_ids = itertools.count(1)
START = datetime(2026, 1, 5, 9, tzinfo=UTC)


def cny(yuan: float) -> Money:
    return Money(currency_code="CNY", minor_units=round(yuan * 100))


class Customer:
    """Builds the events of one account in sequence; `at` moves on with `advance`."""

    def __init__(self, account_id: str, at: datetime = START) -> None:
        self.account_id = account_id
        self.at = at
        self.sequence = 0

    def advance(self, **delta) -> "Customer":
        self.at += timedelta(**delta)
        return self

    def event(self, **kind) -> pb.RepaymentEvent:
        self.sequence += 1
        stamp = Timestamp()
        stamp.FromDatetime(self.at)
        return pb.RepaymentEvent(
            event_id=f"ev-{self.account_id}-{self.sequence}-{next(_ids)}",
            account_id=self.account_id,
            occurred_at=stamp,
            sequence=self.sequence,
            **kind,
        )

    def opened(self, line: float = 5_000, income: float | None = 20_000) -> pb.RepaymentEvent:
        body = pb.AccountOpened(credit_line=cny(line))
        if income is not None:
            body.monthly_income.CopyFrom(cny(income))
        return self.event(account_opened=body)

    def drawn(self, yuan: float, loan_id: str = "loan-1") -> pb.RepaymentEvent:
        return self.event(line_drawn=pb.LineDrawn(loan_id=loan_id, amount=cny(yuan), term_months=3))

    def due(self, yuan: float, number: int = 1) -> pb.RepaymentEvent:
        return self.event(
            instalment_due=pb.InstalmentDue(
                loan_id="loan-1", instalment_number=number, amount=cny(yuan)
            )
        )

    def repaid(self, yuan: float, timing: str = "ON_TIME", dpd_after: int = 0) -> pb.RepaymentEvent:
        return self.event(
            repayment=pb.Repayment(
                loan_id="loan-1",
                amount=cny(yuan),
                timing=pb.RepaymentTiming.Value(f"REPAYMENT_TIMING_{timing}"),
                days_past_due_after=dpd_after,
            )
        )

    def missed(self, yuan: float = 500, days: int = 1) -> pb.RepaymentEvent:
        return self.event(
            payment_missed=pb.PaymentMissed(
                loan_id="loan-1", amount_due=cny(yuan), days_past_due=days
            )
        )

    def past_due(self, days: int) -> pb.RepaymentEvent:
        return self.event(days_past_due_updated=pb.DaysPastDueUpdated(days_past_due=days))

    def inquiry(self) -> pb.RepaymentEvent:
        return self.event(credit_inquiry=pb.CreditInquiry(lender_kind="consumer_finance"))

    def income(self, yuan: float) -> pb.RepaymentEvent:
        return self.event(income_updated=pb.IncomeUpdated(monthly_income=cny(yuan)))

    def transaction(self, yuan: float) -> pb.RepaymentEvent:
        return self.event(
            transaction=pb.Transaction(
                amount=cny(yuan), kind=pb.TRANSACTION_KIND_PURCHASE, category="5411"
            )
        )

    def line_changed(self, yuan: float) -> pb.RepaymentEvent:
        return self.event(credit_line_changed=pb.CreditLineChanged(credit_line=cny(yuan)))

    def closed(self) -> pb.RepaymentEvent:
        return self.event(account_closed=pb.AccountClosed())


def batch(*events: pb.RepaymentEvent, batch_id: str = "") -> pb.EventBatch:
    return pb.EventBatch(batch_id=batch_id or f"b-{next(_ids)}", events=events)


def publish(stub, *events: pb.RepaymentEvent) -> pb.BatchAck:
    return stub.PublishEvents(pb.PublishEventsRequest(batch=batch(*events)), timeout=30).ack


def delinquent_lives(customers: list[Customer]) -> list[pb.RepaymentEvent]:
    """Five events each (opened, a draw, a missed payment, 30 days past due, a late
    repayment), interleaved across accounts and in order within each, as loan servicing
    would publish them."""
    lives = [
        [
            c.opened(line=5_000),
            c.advance(days=1).drawn(3_000),
            c.advance(days=30).missed(days=1),
            c.advance(days=29).past_due(30),
            c.advance(days=1).repaid(1_000, timing="LATE", dpd_after=0),
        ]
        for c in customers
    ]
    return [event for step in zip(*lives, strict=True) for event in step]

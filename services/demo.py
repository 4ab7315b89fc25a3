"""`creditline demo`: one customer's life driven through the running suite, step by step.

The customer applies and gets a first line, draws, repays on time, then misses a payment:
monitoring sees each event, raises signals and tells limits, which puts the line on the
watchlist and cuts it, each decision with its reasons and the notice the customer is sent
(its type, by when it is due, its first sentence). The customer catches up and stays clean
for the policy's period: the watchlist is lifted. Later they fall behind again, are cut and
frozen, catch up, repay on time, and ask to reopen the line: it reopens at stage 1 with the
stage's own line. Every call is a real gRPC call to the services `creditline run` started;
nothing here decides anything.

The story spans more than a year, so its events are replayed dated in the past (day 0 is
STORY_DAYS ago), as a backfill from loan servicing would be; limits judges the time that passed
by the events' own dates, and the reopening request is today's.

Early collections decides as of now, counting the days past due from the date the payment was
missed, so the story runs it (RunCollections, one short line per treatment step) only in its
last chapter, today: the customer misses an instalment of the reopened line, is reminded, pays,
and the treatment stops. The customer lives where it is daytime now, so that the policy's quiet
hours do not hold the reminder back.
"""

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from creditline.limits.v1 import limits_service_pb2 as lpb
from creditline.limits.v1 import limits_service_pb2_grpc
from creditline.monitoring.v1 import monitoring_service_pb2 as mpb
from creditline.monitoring.v1 import monitoring_service_pb2_grpc
from creditline.type.v1.money_pb2 import Money
from services.common.channels import ClientSecurity, create_channel

# A thin-file applicant with a steady job: the application model puts them in band C.
APPLICANT: dict[str, float | str] = {
    "duration_months": 24, "credit_amount": 3500, "checking_account": "below_200",
    "credit_history": "existing_paid_duly", "purpose": "car_used", "savings": "below_100",
    "employment_since": "1_to_4_years", "installment_rate": 3, "other_debtors": "none",
    "residence_since": 2, "property": "car_or_other", "other_installment_plans": "none",
    "housing": "own", "existing_credits": 1, "job": "skilled", "dependants": 1,
    "telephone": "none",
}  # fmt: skip
MONTHLY_INCOME_FEN = 800_000
WAIT_SECONDS = 20.0
STORY_DAYS = 390  # the reopening request, today, is this many days after the application


def cny(fen: int) -> Money:
    return Money(currency_code="CNY", minor_units=fen)


def yuan(money: Money) -> str:
    return f"{money.minor_units / 100:,.2f} yuan"


@dataclass
class Demo:
    limits: limits_service_pb2_grpc.LimitsServiceStub
    monitoring: monitoring_service_pb2_grpc.MonitoringServiceStub
    console: Console
    account_id: str = ""
    customer_id: str = ""
    sequence: int = 0
    seen_events: set[str] = field(default_factory=set)
    seen_notices: set[str] = field(default_factory=set)
    seen_steps: set[str] = field(default_factory=set)
    day: int = 0
    loan: str = "demo-loan"
    # Day 0 of the story: STORY_DAYS ago, so that its last day is today.
    started: datetime = field(
        default_factory=lambda: datetime.now(UTC) - timedelta(days=STORY_DAYS, minutes=1)
    )

    # -- the script ---------------------------------------------------------------------------

    def run(self) -> None:
        self.step(0, "applies for a credit line")
        self.customer_id = f"demo-{uuid.uuid4().hex[:8]}"
        opened = self.limits.OpenAccount(
            lpb.OpenAccountRequest(
                request_id=uuid.uuid4().hex,
                customer_id=self.customer_id,
                monthly_income=cny(MONTHLY_INCOME_FEN),
                features={name: _value(v) for name, v in APPLICANT.items()},
                time_zone=daytime_zone(datetime.now(UTC)),
            )
        )
        self.account_id = opened.account.account_id
        line = opened.account.credit_line
        self.show_limits()
        if opened.account.status != lpb.ACCOUNT_STATUS_ACTIVE:
            self.console.print("[red]declined: the demo ends here[/red]")
            return
        self.events(
            account_opened=mpb.AccountOpened(
                credit_line=line, monthly_income=cny(MONTHLY_INCOME_FEN)
            )
        )
        drawn = line.minor_units // 2
        self.step(1, f"draws {drawn / 100:,.2f} yuan in three instalments")
        self.draw(drawn)
        instalment = drawn // 3
        self.step(31, "repays the first instalment on time")
        self.repay(instalment, mpb.REPAYMENT_TIMING_ON_TIME)
        self.step(62, "misses the second instalment")
        self.missed(instalment, 2)
        self.step(91, "is 30 days past due")
        self.events(days_past_due_updated=mpb.DaysPastDueUpdated(days_past_due=30))
        self.step(100, "catches up: pays everything that is overdue")
        self.repay(2 * instalment, mpb.REPAYMENT_TIMING_LATE)
        for day in (130, 160, 190):
            self.step(day, "repays on time (the watchlist's clean period runs from the cure)")
            self.repay(0, mpb.REPAYMENT_TIMING_ON_TIME)
        self.step(200, "draws again, half of what is available", loan="demo-loan-2")
        available = self.limits.GetAccount(
            lpb.GetAccountRequest(account_id=self.account_id)
        ).account.available_credit.minor_units
        second = available // 2
        self.draw(second)
        self.step(230, "misses an instalment again", loan="demo-loan-2")
        self.missed(second // 3, 1)
        for days in (30, 60):
            self.step(229 + days, f"is {days} days past due", loan="demo-loan-2")
            self.events(days_past_due_updated=mpb.DaysPastDueUpdated(days_past_due=days))
        self.step(295, "catches up: pays everything that is overdue", loan="demo-loan-2")
        self.repay(second, mpb.REPAYMENT_TIMING_LATE)
        for day in (325, 355, 385):
            self.step(day, "repays on time")
            self.repay(0, mpb.REPAYMENT_TIMING_ON_TIME)
        self.step(STORY_DAYS, "asks to reopen the frozen line (today)")
        reopen = self.limits.RequestReopen(
            lpb.RequestReopenRequest(request_id=uuid.uuid4().hex, account_id=self.account_id)
        )
        self.show_limits()
        if reopen.reopened:
            account = reopen.account
            self.console.print(
                f"  reopened at stage {account.reopening_stage} with the stage's own line of "
                f"{yuan(account.credit_line)}; on-time repayments open the next stage"
            )
        else:
            when = reopen.next_eligible_time.ToDatetime(UTC).date()
            self.console.print(f"  not yet: eligible from [bold]{when}[/bold]")
        self.show_conditions()
        self.show_risk()
        if reopen.reopened:
            self.late_again(reopen.account.available_credit.minor_units // 2)

    def late_again(self, fen: int) -> None:
        """Today: a missed instalment of the reopened line, early collections, a cure."""
        self.step(
            STORY_DAYS, "draws on the reopened line and misses an instalment (today)", "demo-loan-3"
        )
        self.draw(fen)
        self.missed(fen // 3, 1)
        self.run_collections()
        self.step(STORY_DAYS, "pays what is overdue (today)", "demo-loan-3")
        self.repay(fen, mpb.REPAYMENT_TIMING_LATE)
        self.run_collections()

    # -- steps ----------------------------------------------------------------------------------

    def step(self, day: int, what: str, loan: str = "demo-loan") -> None:
        self.day, self.loan = day, loan
        self.console.rule(f"[bold]day {day}[/bold]: the customer {what}", align="left")

    def draw(self, fen: int) -> None:
        """A loan of `fen` in three instalments: limits lends, loan servicing tells monitoring."""
        self.limits.Draw(
            lpb.DrawRequest(
                request_id=uuid.uuid4().hex,
                account_id=self.account_id,
                amount=cny(fen),
                purpose="consumption",
                loan_id=self.loan,
            )
        )
        self.events(line_drawn=mpb.LineDrawn(loan_id=self.loan, amount=cny(fen), term_months=3))

    def repay(self, fen: int, timing: mpb.RepaymentTiming.ValueType) -> None:
        if fen:
            self.limits.Repay(
                lpb.RepayRequest(
                    request_id=uuid.uuid4().hex, account_id=self.account_id, amount=cny(fen)
                )
            )
        self.events(repayment=mpb.Repayment(loan_id=self.loan, amount=cny(fen), timing=timing))

    def missed(self, fen: int, instalment_number: int) -> None:
        self.events(
            payment_missed=mpb.PaymentMissed(
                loan_id=self.loan,
                instalment_number=instalment_number,
                amount_due=cny(fen),
                days_past_due=1,
            )
        )

    def events(self, **kind) -> None:
        """Publishes one event to monitoring and shows what it raised and what limits did."""
        self.sequence += 1
        stamp = Timestamp()
        stamp.FromDatetime(self.started + timedelta(days=self.day, milliseconds=self.sequence))
        event = mpb.RepaymentEvent(
            event_id=f"{self.account_id}-{self.sequence}",
            account_id=self.account_id,
            occurred_at=stamp,
            sequence=self.sequence,
            **kind,
        )
        self.monitoring.PublishEvents(
            mpb.PublishEventsRequest(batch=mpb.EventBatch(events=[event]))
        )
        alerts = self._wait_delivered(event.event_id)
        for alert in alerts:
            severity = mpb.AlertSeverity.Name(alert.severity).removeprefix("ALERT_SEVERITY_")
            evidence = ", ".join(f"{k}={v}" for k, v in sorted(alert.evidence.items()))
            self.console.print(
                f"  monitoring: [yellow]{alert.type}[/yellow] ({severity.lower()}; {evidence})"
            )
        self.show_limits()

    def show_limits(self) -> None:
        events = self.limits.ListLimitEvents(
            lpb.ListLimitEventsRequest(account_id=self.account_id, page_size=50)
        ).events
        for event in reversed(events):
            if event.event_id in self.seen_events:
                continue
            self.seen_events.add(event.event_id)
            kind = lpb.LimitEventType.Name(event.type).removeprefix("LIMIT_EVENT_TYPE_").lower()
            status = lpb.AccountStatus.Name(event.status_after).removeprefix("ACCOUNT_STATUS_")
            colour = "red" if event.adverse else "green"
            self.console.print(
                f"  limits: [{colour}]{kind}[/{colour}]: line {yuan(event.line_before)} -> "
                f"{yuan(event.line_after)}, {status.lower()}"
            )
            for reason in event.reasons:
                self.console.print(
                    f"      {reason.code}: {reason.texts['en']} / {reason.texts['zh-CN']}"
                )
        self.show_notices()

    def show_notices(self) -> None:
        """The notices sent to the customer since the last look, one short line each."""
        view = self.limits.GetCustomerView(lpb.GetCustomerViewRequest(customer_id=self.customer_id))
        notices = [n for account in view.accounts for n in account.notices]
        for notice in sorted(notices, key=lambda n: int(n.cursor)):
            if notice.notice_id in self.seen_notices:
                continue
            self.seen_notices.add(notice.notice_id)
            kind = lpb.NoticeType.Name(notice.type).removeprefix("NOTICE_TYPE_").lower()
            due = notice.due_time.ToDatetime(UTC).date()
            first_sentence = notice.texts["en"].split(". ")[0].rstrip(".")
            self.console.print(f"  notice to the customer: {kind} (due {due}): {first_sentence}")

    def run_collections(self) -> None:
        """Early collections run now; the customer's new treatment steps, one short line each."""
        self.limits.RunCollections(lpb.RunCollectionsRequest(request_id=uuid.uuid4().hex))
        view = self.limits.GetCustomerView(lpb.GetCustomerViewRequest(customer_id=self.customer_id))
        steps = [s for account in view.accounts for s in account.treatment_steps]
        for step in sorted(steps, key=lambda s: int(s.cursor)):
            if step.step_id in self.seen_steps:
                continue
            self.seen_steps.add(step.step_id)
            if step.kind == lpb.TREATMENT_STEP_KIND_CONTACT:
                action = lpb.TreatmentAction.Name(step.action).removeprefix("TREATMENT_ACTION_")
                channel = lpb.ContactChannel.Name(step.channel).removeprefix("CONTACT_CHANNEL_")
                what = f"{action.lower()} by {channel.lower()}"
            else:
                why = lpb.TreatmentStopReason.Name(step.stop_reason)
                what = f"stopped ({why.removeprefix('TREATMENT_STOP_REASON_').lower()})"
            self.console.print(f"  collections: {what}: {step.reason.texts['en']}")

    def show_conditions(self) -> None:
        account = self.limits.GetAccount(lpb.GetAccountRequest(account_id=self.account_id)).account
        for condition in account.risk.conditions:
            kind = lpb.ConditionType.Name(condition.type).removeprefix("CONDITION_TYPE_").lower()
            self.console.print(f"  condition [bold]{kind}[/bold]: {condition.exit['en']}")

    def show_risk(self) -> None:
        risk = self.monitoring.GetAccountRisk(
            mpb.GetAccountRiskRequest(account_id=self.account_id, locale="zh-CN")
        ).risk
        table = Table(title="monitoring's view of the account (GetAccountRisk)")
        table.add_column("feature")
        table.add_column("value", justify="right")
        for name, value in sorted(risk.profile.items()):
            table.add_row(name, f"{value:.0f}" if value.is_integer() else f"{value:.3f}")
        self.console.print(table)
        if risk.scored:
            band = "ABCDE"[risk.risk_band - 1]
            reasons = "; ".join(f"{r.code} {r.text}" for r in risk.reasons)
            self.console.print(f"  behaviour score {risk.score:.0f}, band {band}: {reasons}")

    def _wait_delivered(self, event_id: str) -> list[mpb.Alert]:
        """The alerts the event raised, once limits has had every reported one."""
        deadline = time.monotonic() + WAIT_SECONDS
        request = mpb.ListAlertsRequest(filter=mpb.AlertFilter(account_id=self.account_id))
        while True:
            alerts = [
                a for a in self.monitoring.ListAlerts(request).alerts if a.event_id == event_id
            ]
            pending = [a for a in alerts if a.delivery_state == mpb.DELIVERY_STATE_PENDING]
            if not pending or time.monotonic() > deadline:
                return list(reversed(alerts))
            time.sleep(0.1)


def daytime_zone(now: datetime) -> str:
    """A time zone where it is about noon at `now` (Etc/GMT-8 is eight hours ahead of UTC)."""
    offset = 12 - now.hour  # from -11 to +12 hours, all of which exist
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def _value(number: float | str) -> struct_pb2.Value:
    if isinstance(number, str):
        return struct_pb2.Value(string_value=number)
    return struct_pb2.Value(number_value=number)


def run_demo(
    limits_target: str,
    monitoring_target: str,
    token: str | None = None,
    console: Console | None = None,
) -> None:
    """Drives the demo customer through limits and monitoring at these addresses."""
    security = ClientSecurity(token=token)
    limits_channel = create_channel(
        limits_target, service="creditline.limits.v1.LimitsService", security=security
    )
    monitoring_channel = create_channel(
        monitoring_target, service="creditline.monitoring.v1.MonitoringService", security=security
    )
    try:
        Demo(
            limits_service_pb2_grpc.LimitsServiceStub(limits_channel),
            monitoring_service_pb2_grpc.MonitoringServiceStub(monitoring_channel),
            console or Console(),
        ).run()
    finally:
        limits_channel.close()
        monitoring_channel.close()

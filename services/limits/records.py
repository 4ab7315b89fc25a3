"""What the limits service keeps: accounts, the decisions in their history, appeals.

Plain frozen dataclasses, shared by the policy engine (which decides), the store (which keeps)
and the servicer (which converts to protobuf). Money is integer minor units (fen); times are
timezone-aware UTC datetimes.
"""

import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from services.limits.ledger import AccountStatus, Line

_last_stamp = 0
_stamp_lock = threading.Lock()


def new_event_id() -> str:
    """A unique id that sorts in the order events were made in this process.

    The history is listed by (created_at, event_id); decisions taken in the same instant (a
    reversal and its appeal, a test clock) still come back in the order they happened.
    """
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns(), _last_stamp + 1)
        stamp = _last_stamp
    return f"{stamp:016x}{secrets.token_hex(8)}"


class EventType(StrEnum):
    opened = "opened"
    declined = "declined"
    increased = "increased"
    increase_declined = "increase_declined"
    reduced = "reduced"
    reviewed_unchanged = "reviewed_unchanged"
    watchlisted = "watchlisted"
    frozen = "frozen"
    unfrozen = "unfrozen"
    closed = "closed"
    reopened = "reopened"
    reopen_declined = "reopen_declined"
    reopening_stage_advanced = "reopening_stage_advanced"
    hardship_enrolled = "hardship_enrolled"
    preferences_changed = "preferences_changed"
    appeal_reversed = "appeal_reversed"
    watchlist_lifted = "watchlist_lifted"
    anomaly_resolved = "anomaly_resolved"
    hardship_ended = "hardship_ended"
    back_within_line = "back_within_line"


class ActorKind(StrEnum):
    customer = "customer"
    policy = "policy"
    monitoring = "monitoring"
    review = "review"
    operator = "operator"


class ReasonSource(StrEnum):
    model = "model"
    policy = "policy"
    operator = "operator"


@dataclass(frozen=True)
class Reason:
    """A principal reason: a scored model factor or a policy rule, in every locale."""

    code: str
    texts: dict[str, str]  # {"en": ..., "zh-CN": ...}
    source: ReasonSource


@dataclass(frozen=True)
class Hardship:
    """A temporary repayment arrangement; draws pause until it ends."""

    started_at: datetime
    ends_at: datetime
    term_months: int
    monthly_instalment: int


@dataclass(frozen=True)
class RiskState:
    """What limits knows of an account's repayment behaviour: monitoring computes it from the
    events and reports it with every signal; every scored decision stands on it."""

    # The behaviour model's features, and the event time they describe (None: never reported).
    profile: dict[str, float] = field(default_factory=dict)
    profile_at: datetime | None = None
    # Days past due of the account, and of each loan the events named.
    days_past_due: int = 0
    loans_past_due: dict[str, int] = field(default_factory=dict)
    # When the current delinquency began (None: current).
    past_due_since: datetime | None = None
    # The latest behaviour band monitoring's rescoring reported, and when.
    behaviour_band: str | None = None
    behaviour_scored_at: datetime | None = None
    # The last warning signal (the watchlist's clean period counts from it).
    last_warning_at: datetime | None = None
    # An abnormal transaction not yet resolved by an operator, since when.
    anomaly_since: datetime | None = None

    @property
    def past_due(self) -> bool:
        return self.days_past_due > 0


@dataclass(frozen=True)
class Account:
    account_id: str
    customer_id: str
    currency_code: str
    line: Line
    opened_at: datetime
    tier: str | None = None
    risk_band: str | None = None
    # 0 when not reopening; 1, 2, 3 for the stages of a staged reopening.
    reopening_stage: int = 0
    # The line before the account was closed, for the reopening stage that restores part of it.
    line_before_closure: int | None = None
    # When the line was last frozen or closed: reopening counts its waiting period from here.
    suspended_at: datetime | None = None
    next_review_at: datetime | None = None
    automatic_increases: bool = True
    hardship: Hardship | None = None
    # On-time repayments since the last warning or line change (rewards, reopening stages).
    on_time_streak: int = 0
    last_on_time_repayment_at: datetime | None = None
    risk: RiskState = field(default_factory=RiskState)
    # The line's price: its tier's annual rate when the line was last decided, basis points.
    annual_rate_bp: int | None = None
    # What the customer last declared (at application, with a request for more), in minor
    # units a month: every raise checks the ability to pay against it. None: never declared.
    declared_monthly_income: int | None = None
    declared_monthly_debt_payments: int = 0
    # The customer's IANA time zone, as they gave it (None: not given).
    time_zone: str | None = None
    # Incremented by every change; the etag clients send back (AIP-154).
    version: int = 1

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def status(self) -> AccountStatus:
        return self.line.status

    @property
    def over_line(self) -> bool:
        return self.line.drawn > self.line.usable_line


@dataclass(frozen=True)
class Notice:
    """What the customer is told of an adverse decision, and when."""

    texts: dict[str, str]
    sent_at: datetime


@dataclass(frozen=True)
class LimitEvent:
    """One decision in an account's append-only history."""

    event_id: str
    account_id: str
    type: EventType
    line_before: int
    line_after: int
    status_before: AccountStatus
    status_after: AccountStatus
    adverse: bool
    reasons: tuple[Reason, ...]
    policy_version: str
    actor_kind: ActorKind
    created_at: datetime
    request_id: str
    actor_id: str = ""
    model_name: str = ""
    model_version: str = ""
    notice: Notice | None = None
    # Machine-readable details (the signal id, the appealed event, ...).
    details: dict[str, str] = field(default_factory=dict)
    # The line's annual rate after the decision, basis points (None: not priced then).
    annual_rate_bp: int | None = None


class NoticeType(StrEnum):
    """What a notice tells the customer: every decision a customer is told of."""

    opened = "opened"
    declined = "declined"
    increased = "increased"
    increase_declined = "increase_declined"
    reduced = "reduced"
    watchlisted = "watchlisted"
    frozen = "frozen"
    unfrozen = "unfrozen"
    closed = "closed"
    reopened = "reopened"
    reopen_declined = "reopen_declined"
    reopening_stage_advanced = "reopening_stage_advanced"
    hardship_enrolled = "hardship_enrolled"
    appeal_reversed = "appeal_reversed"
    appeal_upheld = "appeal_upheld"


@dataclass(frozen=True)
class CustomerNotice:
    """A decision as the customer is told it, kept in the notice outbox with the decision.

    `number` is its place in the outbox (the stream's cursor), given when it is stored; the
    delivery is recorded when the messaging backend acknowledges it.
    """

    notice_id: str
    account_id: str
    type: NoticeType
    adverse: bool
    reasons: tuple[Reason, ...]
    improvements: tuple[Reason, ...]
    # How to appeal, by locale (adverse notices only; empty otherwise).
    how_to_appeal: dict[str, str]
    texts: dict[str, str]
    created_at: datetime
    due_at: datetime
    templates_version: str
    policy_version: str
    event_id: str | None = None
    appeal_id: str | None = None
    number: int = 0
    delivered_at: datetime | None = None
    delivery_channel: str = ""

    @property
    def delivered(self) -> bool:
        return self.delivered_at is not None


class AppealStatus(StrEnum):
    open = "open"
    upheld = "upheld"
    reversed = "reversed"


@dataclass(frozen=True)
class Appeal:
    appeal_id: str
    account_id: str
    event_id: str
    statement: str
    status: AppealStatus
    created_at: datetime
    resolution: str = ""
    resolved_at: datetime | None = None

"""The policy engine: every decision about a credit line, as a pure function of the account,
the policy in force, the latest score and the time.

Each function returns a `Decision`: the account as it should be stored and the event that
records why (None when nothing a customer would see changed). Refusals that are about the
state of the account, not a judgement on it (a frozen line, a cool-off), raise
FailedPrecondition; judgements (a declined increase) are decisions with principal reasons.
Nothing here talks to a database or a network.
"""

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument
from services.limits import ledger
from services.limits.ledger import AccountStatus, Line
from services.limits.policy import Policy, Severity, SignalAction, Tier
from services.limits.reasons import SIGNAL_REASONS, improvement, policy_reason, principal
from services.limits.records import (
    Account,
    ActorKind,
    EventType,
    Hardship,
    LimitEvent,
    Notice,
    Reason,
    new_event_id,
)

BAND_ORDER = "ABCDE"
POSITIVE_SIGNALS = frozenset({"on_time_repayment", "delinquency_cured"})
ADVERSE_EVENTS = frozenset(
    {
        EventType.declined,
        EventType.increase_declined,
        EventType.reduced,
        EventType.watchlisted,
        EventType.frozen,
        EventType.closed,
        EventType.reopen_declined,
    }
)
EVENT_SUMMARIES = {
    EventType.declined: ("Your application was declined", "您的申请未获批准"),
    EventType.increase_declined: (
        "Your request for a higher line was declined",
        "您的提额申请未获批准",
    ),
    EventType.reduced: ("Your credit line was reduced", "您的信用额度已被下调"),
    EventType.watchlisted: ("Increases to your line are paused", "您的额度暂停提升"),
    EventType.frozen: ("Your credit line is frozen", "您的信用额度已被冻结"),
    EventType.closed: ("Your credit line is closed", "您的信用额度已关闭"),
    EventType.reopen_declined: ("Your line cannot be reopened yet", "您的额度暂不能重新开通"),
}


@dataclass(frozen=True)
class Score:
    """A scoring result as the policy uses it."""

    risk_band: str
    probability_of_default: float
    points: int
    reasons: tuple[Reason, ...]  # the model's principal reasons, in every locale
    model_name: str
    model_version: str


@dataclass(frozen=True)
class Affordability:
    """Monthly income and existing monthly debt payments, in minor units."""

    monthly_income: int
    monthly_debt_payments: int


@dataclass(frozen=True)
class Signal:
    signal_id: str
    type: str
    severity: Severity
    detected_at: datetime
    evidence: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """Who decides, under which policy, when, and for which request."""

    policy: Policy
    now: datetime
    request_id: str
    actor_kind: ActorKind
    actor_id: str = ""


@dataclass(frozen=True)
class Decision:
    account: Account
    event: LimitEvent | None
    approved: bool = True
    improvements: tuple[Reason, ...] = ()
    next_eligible_at: datetime | None = None


# -- opening -------------------------------------------------------------------------------


def open_account(
    ctx: Context,
    account_id: str,
    customer_id: str,
    score: Score,
    affordability: Affordability,
) -> Decision:
    """A tiered first line, or a decline with its principal reasons."""
    policy = ctx.policy
    tier = policy.tier_for(score.risk_band)
    blank = Account(
        account_id=account_id,
        customer_id=customer_id,
        currency_code=policy.currency_code,
        line=Line(credit_line=0, status=AccountStatus.declined),
        opened_at=ctx.now,
        risk_band=score.risk_band,
    )
    reasons: list[Reason] = []
    if tier is None:
        reasons.append(policy_reason("POLICY_DECLINED_RISK_BAND"))
    elif affordable_line(policy, affordability) < tier.initial_line:
        reasons.append(policy_reason("POLICY_ABILITY_TO_PAY"))
    if reasons:
        event = _event(ctx, blank, blank, EventType.declined, [*reasons, *score.reasons], score)
        return Decision(blank, event, approved=False)
    opened = replace(
        blank,
        line=Line(credit_line=tier.initial_line),
        tier=tier.name,
        next_review_at=ctx.now + timedelta(days=policy.review.cadence_days),
    )
    event = _event(ctx, blank, opened, EventType.opened, list(score.reasons), score)
    return Decision(opened, event)


def affordable_line(policy: Policy, affordability: Affordability) -> int:
    """The largest line whose instalment, fully drawn, keeps debt-to-income within policy.

    The instalment of a fully drawn line is the line over the assumed term (interest left out).
    """
    rules = policy.requested_increase
    room = rules.max_debt_to_income * affordability.monthly_income
    room -= affordability.monthly_debt_payments
    return max(0, math.floor(room * rules.assumed_term_months))


# -- requested increase (提额) ---------------------------------------------------------------


@dataclass(frozen=True)
class IncreaseHistory:
    """What the cool-off and the cap on changes need from the account's history."""

    last_declined_at: datetime | None
    line_changes_in_period: tuple[datetime, ...]


def request_increase(
    ctx: Context,
    account: Account,
    requested_line: int | None,
    score: Score,
    affordability: Affordability,
    history: IncreaseHistory,
) -> Decision:
    policy, now = ctx.policy, ctx.now
    rules = policy.requested_increase
    _require_open(account, ctx.now)
    if requested_line is not None and requested_line <= account.line.credit_line:
        raise InvalidArgument([FieldViolation("requested_line", "must be above the current line")])
    if history.last_declined_at is not None:
        eligible_at = history.last_declined_at + timedelta(days=rules.cool_off_days_after_decline)
        if now < eligible_at:
            raise _not_yet("COOL_OFF", "a recent request was declined", eligible_at)
    if len(history.line_changes_in_period) >= rules.max_changes:
        eligible_at = min(history.line_changes_in_period) + timedelta(days=rules.period_days)
        raise _not_yet("CHANGE_LIMIT", "the line has changed too often lately", eligible_at)

    reasons: list[Reason] = []
    next_eligible_at = now + timedelta(days=rules.cool_off_days_after_decline)
    if account.status is AccountStatus.watchlist:
        reasons.append(policy_reason("POLICY_WATCHLIST"))
    if account.days_past_due > 0:
        reasons.append(policy_reason("POLICY_DAYS_PAST_DUE"))
    tier = policy.tier_for(score.risk_band)
    current_line = account.line.credit_line
    target = current_line
    if tier is None or _band_worse(score.risk_band, account.risk_band):
        reasons.append(policy_reason("POLICY_RISK_NOT_IMPROVED"))
        reasons.extend(score.reasons)
    else:
        ready_at = add_months(account.opened_at, tier.min_months_on_book_for_increase)
        if now < ready_at:
            reasons.append(policy_reason("POLICY_MONTHS_ON_BOOK"))
            next_eligible_at = max(next_eligible_at, ready_at)
        target = min(current_line + tier.increase_step, tier.max_line)
        if requested_line is not None:
            target = min(target, requested_line)
        affordable = affordable_line(policy, affordability)
        if target <= current_line:
            reasons.append(policy_reason("POLICY_TIER_MAXIMUM"))
        elif affordable <= current_line:
            reasons.append(policy_reason("POLICY_ABILITY_TO_PAY"))
        target = min(target, affordable)

    if reasons:
        event = _event(ctx, account, account, EventType.increase_declined, reasons, score)
        return Decision(
            account,
            event,
            approved=False,
            improvements=tuple(improvement(r) for r in event.reasons),
            next_eligible_at=next_eligible_at,
        )
    raised = _with_line(account, target, tier=tier, risk_band=score.risk_band)
    reasons = [policy_reason("POLICY_CUSTOMER_REQUEST"), *score.reasons]
    return Decision(raised, _event(ctx, account, raised, EventType.increased, reasons, score))


# -- review --------------------------------------------------------------------------------


def review(ctx: Context, account: Account, score: Score, *, fresh_score: bool = True) -> Decision:
    """The periodic re-evaluation: raise, keep or lower the line by at most the review's step.

    Without a fresh score (no recent behaviour profile) a line can be kept or lowered, never
    raised.
    """
    policy = ctx.policy
    if account.status in (AccountStatus.closed, AccountStatus.declined):
        raise FailedPrecondition(f"the line is {account.status}", reason="NOT_REVIEWABLE")
    tier = policy.tier_for(score.risk_band)
    line = account.line.credit_line
    largest_change = math.floor(line * policy.review.max_change_fraction)
    scheduled = replace(
        account,
        risk_band=score.risk_band,
        tier=tier.name if tier else account.tier,
        next_review_at=ctx.now + timedelta(days=policy.review.cadence_days),
    )
    reasons = [policy_reason("POLICY_SCHEDULED_REVIEW")]
    if tier is None or line > tier.max_line:
        floor = 0 if tier is None else tier.max_line
        reduced = _with_line(scheduled, max(floor, line - largest_change))
        if reduced.line.credit_line < line:
            adverse = [policy_reason("POLICY_RISK_BAND_WORSENED"), *score.reasons]
            event = _event(ctx, account, reduced, EventType.reduced, adverse, score)
            return Decision(reduced, event)
    elif fresh_score and _may_increase(policy, account, tier, ctx.now) and line < tier.max_line:
        target = min(line + max(1, min(tier.increase_step, largest_change)), tier.max_line)
        raised = _with_line(scheduled, target)
        reasons.append(policy_reason("POLICY_GOOD_REPAYMENT"))
        return Decision(raised, _event(ctx, account, raised, EventType.increased, reasons, score))
    event = _event(ctx, account, scheduled, EventType.reviewed_unchanged, reasons, score)
    return Decision(scheduled, event)


def last_known_score(account: Account) -> Score:
    """The account's last risk band standing in for a score, where no fresh one can be had."""
    return Score(account.risk_band or "E", math.nan, 0, (), "", "")


# Days-past-due thresholds, the signal monitoring raises at each, and its severity.
DAYS_PAST_DUE_SIGNALS = (
    (90, "days_past_due_90", Severity.critical),
    (60, "days_past_due_60", Severity.high),
    (30, "days_past_due_30", Severity.medium),
    (1, "days_past_due_1", Severity.low),
)

SIMULATED_OUTCOMES = {
    EventType.increased: "rise",
    EventType.reduced: "fall",
    EventType.frozen: "freeze",
    EventType.closed: "close",
}


def simulate(ctx: Context, account: Account) -> tuple[str | None, int]:
    """What a candidate policy (in ctx) would do to an account now: "rise", "fall", "freeze",
    "close" or None, and the change of its line. Nothing is stored."""
    decision = None
    for threshold, signal_type, severity in DAYS_PAST_DUE_SIGNALS:
        if account.days_past_due >= threshold:
            signal = Signal("simulation", signal_type, severity, ctx.now)
            decision = apply_signal(ctx, account, signal)
            break
    if decision is None or decision.event is None:
        if account.status not in ledger.DRAWS_ALLOWED:
            return None, 0
        decision = review(ctx, account, last_known_score(account))
    change = decision.account.line.credit_line - account.line.credit_line
    return SIMULATED_OUTCOMES.get(decision.event.type), change


# -- signals from monitoring ---------------------------------------------------------------


def apply_signal(ctx: Context, account: Account, signal: Signal) -> Decision:
    """Updates what the account knows of repayment behaviour and applies the policy's action."""
    if signal.type in POSITIVE_SIGNALS:
        return _apply_positive(ctx, account, signal)
    account = _record_warning(account, signal)
    rules = ctx.policy.actions_for(signal.type, signal.severity)
    if not rules:
        return Decision(account, None)
    rule = rules[-1]  # the strongest action the signal triggers
    reason = policy_reason(SIGNAL_REASONS.get(signal.type, "POLICY_RISK_BAND_WORSENED"))
    status, line = account.status, account.line.credit_line
    if rule.action is SignalAction.close and status is not AccountStatus.closed:
        after = _suspend(account, AccountStatus.closed, ctx.now)
        kind = EventType.closed
    elif rule.action is SignalAction.freeze and status in ledger.DRAWS_ALLOWED:
        after = _suspend(account, AccountStatus.frozen, ctx.now)
        kind = EventType.frozen
    elif rule.action is SignalAction.reduce and status in ledger.DRAWS_ALLOWED:
        after = _with_line(account, math.floor(line * rule.line_fraction))
        kind = EventType.reduced
        if after.line.credit_line >= line:
            return Decision(account, None)  # already drawn down to the line: nothing to cut
    elif rule.action is SignalAction.watchlist and status is AccountStatus.active:
        after = replace(account, line=ledger.set_status(account.line, AccountStatus.watchlist))
        kind = EventType.watchlisted
    else:
        return Decision(account, None)  # the account is already under a stronger action
    after = replace(after, on_time_streak=0)
    event = _event(ctx, account, after, kind, [reason], details={"signal_id": signal.signal_id})
    return Decision(after, event)


def _record_warning(account: Account, signal: Signal) -> Account:
    if signal.type.startswith("days_past_due_"):
        days = int(signal.evidence.get("days_past_due", signal.type.rsplit("_", 1)[1]))
        return replace(account, days_past_due=max(account.days_past_due, days), on_time_streak=0)
    if signal.type == "abnormal_transaction":
        return replace(account, open_anomaly=True)
    return account


def _apply_positive(ctx: Context, account: Account, signal: Signal) -> Decision:
    if signal.type == "delinquency_cured":
        return Decision(replace(account, days_past_due=0), None)
    account = replace(
        account,
        on_time_streak=account.on_time_streak + 1,
        last_on_time_repayment_at=signal.detected_at,
        days_past_due=0,
    )
    policy, reopening = ctx.policy, ctx.policy.reopening
    details = {"signal_id": signal.signal_id}
    stage = account.reopening_stage
    if 0 < stage < len(reopening.stages):
        needed = reopening.stages[stage - 1].advance_after_on_time_repayments
        if account.on_time_streak >= needed and account.status in ledger.DRAWS_ALLOWED:
            advanced = replace(
                _with_line(account, _stage_line(policy, account, stage + 1)),
                reopening_stage=stage + 1,
            )
            reasons = [policy_reason("POLICY_GOOD_REPAYMENT")]
            kind = EventType.reopening_stage_advanced
            return Decision(
                advanced, _event(ctx, account, advanced, kind, reasons, details=details)
            )
        return Decision(account, None)
    tier = policy.tier_for(account.risk_band or "E")
    if (
        tier is not None
        and account.on_time_streak >= policy.reward.consecutive_on_time_repayments
        and months_on_book(account, ctx.now) >= policy.reward.min_months_on_book
        and _may_increase(policy, account, tier, ctx.now)
        and account.line.credit_line < tier.max_line
    ):
        raised = _with_line(
            account, min(account.line.credit_line + tier.increase_step, tier.max_line)
        )
        reasons = [policy_reason("POLICY_GOOD_REPAYMENT")]
        return Decision(
            raised, _event(ctx, account, raised, EventType.increased, reasons, details=details)
        )
    return Decision(account, None)


# -- reopening -----------------------------------------------------------------------------


def request_reopen(ctx: Context, account: Account, score: Score) -> Decision:
    """Reopens a closed or frozen line at stage 1 when every eligibility rule holds."""
    if account.status not in (AccountStatus.closed, AccountStatus.frozen):
        raise FailedPrecondition(
            f"the line is {account.status}, not closed or frozen", reason="NOT_SUSPENDED"
        )
    rules, now = ctx.policy.reopening.eligibility, ctx.now
    reasons: list[Reason] = []
    next_eligible_at = now + timedelta(
        days=ctx.policy.requested_increase.cool_off_days_after_decline
    )
    suspended_at = account.suspended_at or account.opened_at
    waited_until = suspended_at + timedelta(days=rules.min_days_since_closure)
    if now < waited_until:
        reasons.append(policy_reason("POLICY_REOPEN_TOO_SOON"))
        next_eligible_at = max(next_eligible_at, waited_until)
    if account.days_past_due > 0:
        reasons.append(policy_reason("POLICY_DAYS_PAST_DUE"))
    last_on_time = account.last_on_time_repayment_at
    if last_on_time is None or now - last_on_time > timedelta(
        days=rules.max_days_since_last_on_time_repayment
    ):
        reasons.append(policy_reason("POLICY_NO_RECENT_ON_TIME_REPAYMENT"))
    if account.open_anomaly:
        reasons.append(policy_reason("POLICY_OPEN_ANOMALY"))
    if _band_worse(score.risk_band, rules.worst_risk_band):
        reasons.append(policy_reason("POLICY_RISK_NOT_IMPROVED"))
        reasons.extend(score.reasons)
    if reasons:
        event = _event(ctx, account, account, EventType.reopen_declined, reasons, score)
        return Decision(account, event, approved=False, next_eligible_at=next_eligible_at)
    tier = ctx.policy.tier_for(score.risk_band)
    reopened = replace(
        account,
        line=Line(
            credit_line=account.line.credit_line,
            drawn=account.line.drawn,
            customer_cap=account.line.customer_cap,
        ),
        reopening_stage=1,
        risk_band=score.risk_band,
        tier=tier.name if tier else account.tier,
        on_time_streak=0,
        line_before_closure=account.line_before_closure or account.line.credit_line,
    )
    reopened = _with_line(reopened, _stage_line(ctx.policy, reopened, 1))
    event = _event(ctx, account, reopened, EventType.reopened, list(score.reasons), score)
    return Decision(reopened, event)


def _stage_line(policy: Policy, account: Account, stage_number: int) -> int:
    stage = policy.reopening.stages[stage_number - 1]
    if stage.line is not None:
        line = stage.line
    elif stage.former_line_fraction is not None:
        line = math.floor((account.line_before_closure or 0) * stage.former_line_fraction)
    else:
        tier = policy.tier_for(account.risk_band or "E")
        line = tier.initial_line if tier else 0
    # Advancing never lowers the line.
    return max(line, account.line.credit_line if stage_number > 1 else 0)


# -- operator actions ----------------------------------------------------------------------


def freeze(ctx: Context, account: Account, note: str) -> Decision:
    if account.status not in ledger.DRAWS_ALLOWED:
        raise FailedPrecondition(f"the line is {account.status}", reason="NOT_FREEZABLE")
    after = _suspend(account, AccountStatus.frozen, ctx.now)
    return Decision(after, _operator_event(ctx, account, after, EventType.frozen, note))


def unfreeze(ctx: Context, account: Account, note: str) -> Decision:
    if account.status is not AccountStatus.frozen:
        raise FailedPrecondition(f"the line is {account.status}, not frozen", reason="NOT_FROZEN")
    after = replace(account, line=ledger.set_status(account.line, AccountStatus.active))
    return Decision(after, _operator_event(ctx, account, after, EventType.unfrozen, note))


def close(ctx: Context, account: Account, note: str) -> Decision:
    if account.status in (AccountStatus.closed, AccountStatus.declined):
        raise FailedPrecondition(f"the line is {account.status}", reason="NOT_CLOSABLE")
    after = _suspend(account, AccountStatus.closed, ctx.now)
    return Decision(after, _operator_event(ctx, account, after, EventType.closed, note))


# -- hardship, preferences, appeals --------------------------------------------------------


def enroll_hardship(
    ctx: Context, account: Account, term_months: int, earlier_enrollments: list[datetime]
) -> Decision:
    rules, now = ctx.policy.hardship, ctx.now
    if not 1 <= term_months <= rules.max_term_months:
        raise InvalidArgument(
            [FieldViolation("term_months", f"must be from 1 to {rules.max_term_months}")]
        )
    if account.status in (AccountStatus.closed, AccountStatus.declined):
        raise FailedPrecondition(f"the line is {account.status}", reason="NOT_ELIGIBLE")
    if in_hardship(account, now):
        raise FailedPrecondition("a hardship arrangement is running", reason="HARDSHIP_RUNNING")
    if months_on_book(account, now) < rules.min_months_on_book:
        raise FailedPrecondition(
            f"hardship needs {rules.min_months_on_book} months on book", reason="TOO_NEW"
        )
    last_year = [t for t in earlier_enrollments if now - t < timedelta(days=365)]
    last_five = [t for t in earlier_enrollments if now - t < timedelta(days=5 * 365)]
    if len(last_year) >= rules.max_in_12_months or len(last_five) >= rules.max_in_5_years:
        raise FailedPrecondition(
            "hardship arrangements are limited in number", reason="HARDSHIP_LIMIT"
        )
    hardship = Hardship(
        started_at=now,
        ends_at=add_months(now, term_months),
        term_months=term_months,
        monthly_instalment=math.ceil(account.line.drawn / term_months),
    )
    after = replace(account, hardship=hardship, line=replace(account.line, in_hardship=True))
    reasons = [policy_reason("POLICY_CUSTOMER_REQUEST")]
    return Decision(after, _event(ctx, account, after, EventType.hardship_enrolled, reasons))


def set_preferences(
    ctx: Context, account: Account, customer_cap: int | None, automatic_increases: bool
) -> Decision:
    if customer_cap is not None and not 0 < customer_cap <= account.line.credit_line:
        raise InvalidArgument(
            [FieldViolation("customer_cap", "must be above zero and at most the granted line")]
        )
    after = replace(
        account,
        line=replace(account.line, customer_cap=customer_cap),
        automatic_increases=automatic_increases,
    )
    reasons = [policy_reason("POLICY_CUSTOMER_REQUEST")]
    return Decision(after, _event(ctx, account, after, EventType.preferences_changed, reasons))


def reverse(ctx: Context, account: Account, appealed: LimitEvent) -> Decision:
    """Restores the line and status from before an appealed decision."""
    restored = replace(
        account,
        line=replace(
            ledger.change_line(account.line, appealed.line_before),
            status=appealed.status_before,
        ),
    )
    reasons = [policy_reason("POLICY_APPEAL_REVERSED")]
    details = {"appealed_event_id": appealed.event_id}
    event = _event(ctx, account, restored, EventType.appeal_reversed, reasons, details=details)
    return Decision(restored, event)


# -- helpers -------------------------------------------------------------------------------


def months_on_book(account: Account, now: datetime) -> int:
    opened = account.opened_at
    months = (now.year - opened.year) * 12 + now.month - opened.month
    return months - (now.day < opened.day)


def add_months(moment: datetime, months: int) -> datetime:
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    # The 31st of a shorter month is its last day.
    for day in range(moment.day, 27, -1):
        try:
            return moment.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    return moment.replace(year=year, month=month, day=28)


def in_hardship(account: Account, now: datetime) -> bool:
    return account.hardship is not None and now < account.hardship.ends_at


def current(account: Account, now: datetime) -> Account:
    """The account as of `now`: a hardship arrangement that has ended no longer pauses draws."""
    if account.line.in_hardship and not in_hardship(account, now):
        return replace(account, line=replace(account.line, in_hardship=False))
    return account


def _may_increase(policy: Policy, account: Account, tier: Tier, now: datetime) -> bool:
    return (
        account.status is AccountStatus.active
        and account.automatic_increases
        and account.days_past_due == 0
        and not in_hardship(account, now)
        and months_on_book(account, now) >= tier.min_months_on_book_for_increase
    )


def _band_worse(band: str, than: str | None) -> bool:
    return than is not None and BAND_ORDER.index(band) > BAND_ORDER.index(than)


def _require_open(account: Account, now: datetime) -> None:
    if account.status not in ledger.DRAWS_ALLOWED:
        raise FailedPrecondition(
            f"the line is {account.status}", reason=f"LINE_{account.status.upper()}"
        )
    if in_hardship(account, now):
        raise FailedPrecondition(
            "no increases during a hardship arrangement", reason="LINE_IN_HARDSHIP"
        )


def _not_yet(reason: str, why: str, eligible_at: datetime) -> FailedPrecondition:
    return FailedPrecondition(
        f"{why}; the next request can be considered from {eligible_at.isoformat()}",
        reason=reason,
        metadata={"next_eligible_time": eligible_at.isoformat()},
    )


def _with_line(account: Account, new_line: int, **changes) -> Account:
    tier = changes.pop("tier", None)
    if tier is not None:
        changes["tier"] = tier.name
    changed = replace(account, line=ledger.change_line(account.line, new_line), **changes)
    if changed.line.credit_line != account.line.credit_line:
        changed = replace(changed, on_time_streak=0)
    return changed


def _suspend(account: Account, status: AccountStatus, now: datetime) -> Account:
    return replace(
        account,
        line=ledger.set_status(account.line, status),
        suspended_at=now,
        reopening_stage=0,
        line_before_closure=account.line.credit_line,
    )


def _operator_event(ctx: Context, before: Account, after: Account, kind: EventType, note: str):
    reason = policy_reason("POLICY_OPERATOR")
    return _event(ctx, before, after, kind, [reason], details={"note": note} if note else {})


def _event(
    ctx: Context,
    before: Account,
    after: Account,
    kind: EventType,
    reasons: list[Reason],
    score: Score | None = None,
    details: dict[str, str] | None = None,
) -> LimitEvent:
    adverse = kind in ADVERSE_EVENTS
    chosen = principal(reasons)
    notice = _notice(kind, chosen, ctx.now) if adverse else None
    return LimitEvent(
        event_id=new_event_id(),
        account_id=after.account_id,
        type=kind,
        line_before=before.line.credit_line,
        line_after=after.line.credit_line,
        status_before=before.status,
        status_after=after.status,
        adverse=adverse,
        reasons=chosen,
        policy_version=ctx.policy.version,
        actor_kind=ctx.actor_kind,
        actor_id=ctx.actor_id,
        created_at=ctx.now,
        request_id=ctx.request_id,
        model_name=score.model_name if score else "",
        model_version=score.model_version if score else "",
        notice=notice,
        details=details or {},
    )


def _notice(kind: EventType, reasons: tuple[Reason, ...], now: datetime) -> Notice:
    """The adverse action notice: what was decided, the principal reasons, the right to appeal."""
    en_summary, zh_summary = EVENT_SUMMARIES[kind]
    en = "; ".join(r.texts["en"] for r in reasons)
    zh = "；".join(r.texts["zh-CN"] for r in reasons)
    return Notice(
        texts={
            "en": f"{en_summary}. Principal reasons: {en}. You may appeal this decision.",
            "zh-CN": f"{zh_summary}。主要原因：{zh}。您可以对此决定提出申诉。",
        },
        sent_at=now,
    )

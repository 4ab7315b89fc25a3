"""The policy engine: every decision about a credit line, as a pure function of the account,
the policy in force, the latest score and the time.

Each function returns a `Decision`: the account as it should be stored and the event that
records why (None when nothing a customer would see changed). Refusals that are about the
state of the account, not a judgement on it (a frozen line, a cool-off), raise
FailedPrecondition; judgements (a declined increase) are decisions with principal reasons, and
the principal reasons are what caused the outcome: a model's factors only where the score did.
Scored decisions stand on the account's risk state (`RiskState`), which monitoring reports;
where it is not fresh there is no score (None) and no decision raises the line.
Nothing here talks to a database or a network.
"""

import calendar
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

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
    RiskState,
    new_event_id,
)

BAND_ORDER = "ABCDE"
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
    # Features whose reported value was outside the model's range, scored at its end.
    clamped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unscored:
    """An account whose risk state the model could not score, and why (for the record: the
    account is left undecided, never decided on a guess)."""

    reason: str


@dataclass(frozen=True)
class Affordability:
    """Monthly income and existing monthly debt payments, in minor units."""

    monthly_income: int
    monthly_debt_payments: int


@dataclass(frozen=True)
class RiskReport:
    """What monitoring computed of the account from its events, at `profile_at` (event time)."""

    profile: dict[str, float]
    profile_at: datetime
    days_past_due: int
    risk_band: str | None = None
    scored_at: datetime | None = None


@dataclass(frozen=True)
class Signal:
    signal_id: str
    type: str  # a SignalType of the contract, by the policy's name for it
    severity: Severity
    detected_at: datetime
    days_past_due: int = 0
    loan_id: str = ""
    evidence: dict[str, str] = field(default_factory=dict)
    report: RiskReport | None = None


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
    *,
    time_zone: str | None = None,
) -> Decision:
    """A tiered first line, or a decline with its principal reasons."""
    policy = ctx.policy
    tier = policy.acquisition_tier(score.risk_band)
    blank = Account(
        account_id=account_id,
        customer_id=customer_id,
        currency_code=policy.currency_code,
        line=Line(credit_line=0, status=AccountStatus.declined),
        opened_at=ctx.now,
        risk_band=score.risk_band,
        declared_monthly_income=affordability.monthly_income,
        declared_monthly_debt_payments=affordability.monthly_debt_payments,
        time_zone=time_zone,
    )
    reasons: list[Reason] = []
    if tier is None:  # the score decided: its factors are the reasons
        reasons = [policy_reason("POLICY_DECLINED_RISK_BAND"), *score.reasons]
    elif affordable_line(policy, affordability, tier.annual_rate_bp) < tier.initial_line:
        reasons = [policy_reason("POLICY_ABILITY_TO_PAY")]
    if reasons or tier is None:
        event = _event(ctx, blank, blank, EventType.declined, reasons, score)
        return Decision(
            blank,
            event,
            approved=False,
            next_eligible_at=ctx.now
            + timedelta(days=policy.application.cool_off_days_after_decline),
        )
    opened = replace(
        blank,
        line=Line(credit_line=tier.initial_line),
        tier=tier.name,
        annual_rate_bp=tier.annual_rate_bp,
        next_review_at=ctx.now + timedelta(days=policy.review.cadence_days),
    )
    event = _event(ctx, blank, opened, EventType.opened, list(score.reasons), score)
    return Decision(opened, event)


def reapplication_allowed_at(policy: Policy, last_declined_at: datetime) -> datetime:
    """When a declined applicant may apply again."""
    return last_declined_at + timedelta(days=policy.application.cool_off_days_after_decline)


def affordable_line(policy: Policy, affordability: Affordability, annual_rate_bp: int) -> int:
    """The largest line whose instalment, fully drawn and repaid in equal monthly instalments
    at `annual_rate_bp` over the policy's term, keeps debt-to-income within policy."""
    rules = policy.ability_to_pay
    room = rules.max_debt_to_income * affordability.monthly_income
    room -= affordability.monthly_debt_payments
    if room <= 0:
        return 0
    return math.floor(room * _annuity_factor(annual_rate_bp, rules.assumed_term_months))


def monthly_instalment(principal: int, annual_rate_bp: int, months: int) -> int:
    """The equal monthly instalment that repays `principal` with interest over `months`, fen
    rounded up."""
    return math.ceil(principal / _annuity_factor(annual_rate_bp, months))


def _annuity_factor(annual_rate_bp: int, months: int) -> float:
    """What one unit a month for `months` repays at this annual rate: (1 - (1+i)^-n) / i."""
    monthly = annual_rate_bp / 10_000 / 12
    if monthly == 0:
        return float(months)
    return (1 - (1 + monthly) ** -months) / monthly


def rate_of(policy: Policy, account: Account) -> int:
    """The account's annual rate; for a line priced before rates were kept, its tier's."""
    if account.annual_rate_bp is not None:
        return account.annual_rate_bp
    tier = policy.tier_named(account.tier)
    return tier.annual_rate_bp if tier else 0


def declared(account: Account) -> Affordability | None:
    """What the customer last declared, or None when they never did."""
    if account.declared_monthly_income is None:
        return None
    return Affordability(account.declared_monthly_income, account.declared_monthly_debt_payments)


def _affordable_raise(policy: Policy, account: Account, target: int, tier: Tier) -> int:
    """`target`, cut down to what the customer's declared income carries at the tier's rate
    (the current line, when nothing more is affordable or nothing was declared)."""
    affordability = declared(account)
    if affordability is None:
        return account.line.credit_line
    affordable = affordable_line(policy, affordability, tier.annual_rate_bp)
    return max(account.line.credit_line, min(target, affordable))


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
    score: Score | None,
    affordability: Affordability,
    history: IncreaseHistory,
) -> Decision:
    """The customer asks for a higher line; `score` is the account's risk state scored, or
    None when that state is not fresh (then the answer is a decline the customer can read)."""
    policy, now = ctx.policy, ctx.now
    rules = policy.requested_increase
    _require_open(account, ctx.now)
    if requested_line is not None and requested_line <= account.line.credit_line:
        raise InvalidArgument([FieldViolation("requested_line", "must be above the current line")])
    if history.last_declined_at is not None:
        eligible_at = history.last_declined_at + timedelta(days=rules.cool_off_days_after_decline)
        if now < eligible_at:
            raise not_yet("COOL_OFF", "a recent request was declined", eligible_at)
    if len(history.line_changes_in_period) >= rules.max_changes:
        eligible_at = min(history.line_changes_in_period) + timedelta(days=rules.period_days)
        raise not_yet("CHANGE_LIMIT", "the line has changed too often lately", eligible_at)

    # The declaration is the customer's latest word on their income and debts: kept, whatever
    # the answer, for every later raise's ability-to-pay check.
    account = replace(
        account,
        declared_monthly_income=affordability.monthly_income,
        declared_monthly_debt_payments=affordability.monthly_debt_payments,
    )
    reasons: list[Reason] = []
    next_eligible_at = now + timedelta(days=rules.cool_off_days_after_decline)
    if account.status is AccountStatus.watchlist:
        reasons.append(policy_reason("POLICY_WATCHLIST"))
    if account.risk.past_due:
        reasons.append(policy_reason("POLICY_DAYS_PAST_DUE"))
    if 0 < account.reopening_stage < len(policy.reopening.stages):
        reasons.append(policy_reason("POLICY_REOPENING_STAGE"))
    current_line = account.line.credit_line
    target = current_line
    tier = policy.managed_tier(score.risk_band) if score else None
    if score is None:
        reasons.append(policy_reason("POLICY_NO_RECENT_HISTORY"))
    elif tier is None or policy.tier_rank(tier.name) > policy.tier_rank(account.tier):
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
        affordable = affordable_line(policy, affordability, tier.annual_rate_bp)
        if target <= current_line:
            reasons.append(policy_reason("POLICY_TIER_MAXIMUM"))
        elif affordable <= current_line:
            reasons.append(policy_reason("POLICY_ABILITY_TO_PAY"))
        target = min(target, affordable)

    declaration = {
        "declared_monthly_income": str(affordability.monthly_income),
        "declared_monthly_debt_payments": str(affordability.monthly_debt_payments),
    }
    if reasons or score is None:
        event = _event(
            ctx, account, account, EventType.increase_declined, reasons, score, declaration
        )
        return Decision(
            account,
            event,
            approved=False,
            improvements=tuple(improvement(r) for r in event.reasons),
            next_eligible_at=next_eligible_at,
        )
    assert tier is not None  # without a managed tier a reason above declined the request
    raised = _with_line(
        account,
        target,
        tier=tier.name,
        annual_rate_bp=tier.annual_rate_bp,
        risk_band=score.risk_band,
    )
    reasons = [policy_reason("POLICY_CUSTOMER_REQUEST"), *score.reasons]
    event = _event(ctx, account, raised, EventType.increased, reasons, score, declaration)
    return Decision(raised, event)


# -- review --------------------------------------------------------------------------------


def review(ctx: Context, account: Account, score: Score | None) -> Decision:
    """The periodic re-evaluation: raise, keep or lower the line by at most the review's step.

    Without a score (the risk state is not fresh) the account's last band stands in: the line
    can be kept or lowered, never raised.
    """
    policy = ctx.policy
    if account.status in (AccountStatus.closed, AccountStatus.declined):
        raise FailedPrecondition(f"the line is {account.status}", reason="NOT_REVIEWABLE")
    band = score.risk_band if score else account.risk_band or "E"
    tier = policy.managed_tier(band) if score else policy.tier_named(account.tier)
    line = account.line.credit_line
    largest_change = math.floor(line * policy.review.max_change_fraction)
    # What every outcome changes besides the line: applied with the line's change, if any,
    # so that the account is copied once.
    schedule: dict[str, Any] = {
        "risk_band": band,
        "tier": tier.name if tier else account.tier,
        "annual_rate_bp": tier.annual_rate_bp if tier else account.annual_rate_bp,
        "next_review_at": ctx.now + timedelta(days=policy.review.cadence_days),
    }
    reasons = [policy_reason("POLICY_SCHEDULED_REVIEW")]
    if tier is None or line > tier.max_line:
        floor = 0 if tier is None else tier.max_line
        reduced_line = max(floor, line - largest_change)
        if reduced_line < line:
            reduced = _with_line(account, reduced_line, **schedule)
            adverse = [
                policy_reason("POLICY_RISK_BAND_WORSENED"),
                *(score.reasons if score else ()),
            ]
            event = _event(ctx, account, reduced, EventType.reduced, adverse, score)
            return Decision(reduced, event)
    elif (
        score is not None
        and _may_increase(policy, account, tier, ctx.now)
        and line < tier.max_line
        # A worse tier than the line's own raises nothing, even where its maximum has room.
        and policy.tier_rank(tier.name) <= policy.tier_rank(account.tier)
    ):
        target = min(line + max(1, min(tier.increase_step, largest_change)), tier.max_line)
        target = _affordable_raise(policy, account, target, tier)
        if target > line:
            raised = _with_line(account, target, **schedule)
            reasons.append(policy_reason("POLICY_GOOD_REPAYMENT"))
            event = _event(ctx, account, raised, EventType.increased, reasons, score)
            return Decision(raised, event)
        reasons.append(policy_reason("POLICY_ABILITY_TO_PAY"))  # what kept the line
    if score is None:
        reasons.append(policy_reason("POLICY_NO_RECENT_HISTORY"))
    scheduled = replace(account, **schedule)
    event = _event(ctx, account, scheduled, EventType.reviewed_unchanged, reasons, score)
    return Decision(scheduled, event)


def is_fresh(policy: Policy, risk: RiskState, now: datetime) -> bool:
    """Whether the reported behaviour profile is recent enough to be scored for a decision."""
    if risk.profile_at is None or not risk.profile:
        return False
    return now - risk.profile_at <= timedelta(days=policy.risk_state.max_age_days)


def settle(ctx: Context, account: Account, at: datetime | None = None) -> list[Decision]:
    """The exits that the time (`at`, now by default; a signal's own event time) or the
    account's state has opened, each an event: a hardship arrangement that ended, a watchlist
    whose clean period passed."""
    at = ctx.now if at is None else min(at, ctx.now)
    decisions = []
    hardship = account.hardship
    if hardship is not None and account.line.in_hardship and at >= hardship.ends_at:
        after = replace(account, line=replace(account.line, in_hardship=False))
        reasons = [policy_reason("POLICY_HARDSHIP_ENDED")]
        decisions.append(
            Decision(after, _event(ctx, account, after, EventType.hardship_ended, reasons))
        )
        account = after
    if (lifted_at := watchlist_lifts_at(ctx.policy, account)) is not None and at >= lifted_at:
        after = replace(account, line=ledger.set_status(account.line, AccountStatus.active))
        reasons = [policy_reason("POLICY_CLEAN_PERIOD")]
        decisions.append(
            Decision(after, _event(ctx, account, after, EventType.watchlist_lifted, reasons))
        )
    return decisions


def watchlist_lifts_at(policy: Policy, account: Account) -> datetime | None:
    """When a watchlisted account leaves the watchlist if it stays clean (None: it is not on
    it, or a payment is past due, and no time alone takes it off)."""
    risk = account.risk
    if account.status is not AccountStatus.watchlist or risk.past_due:
        return None
    clean_since = risk.last_warning_at or account.opened_at
    return clean_since + timedelta(days=policy.watchlist.clean_period_days)


SIMULATED_OUTCOMES = {
    EventType.increased: "rise",
    EventType.reduced: "fall",
    EventType.reviewed_unchanged: "unchanged",
}


# -- signals from monitoring ---------------------------------------------------------------


def apply_report(ctx: Context, account: Account, report: RiskReport) -> Account:
    """Keeps the newer of the stored and the reported risk state (reports can cross). What
    changed is dated by the event time it happened at (never later than now), so an outbox
    that delivers late moves no clean period."""
    risk = account.risk
    if risk.profile_at is not None and report.profile_at < risk.profile_at:
        return account
    days = report.days_past_due
    if report.profile:  # a report without features keeps the last profile, and its time
        risk = replace(risk, profile=dict(report.profile), profile_at=report.profile_at)
    if report.risk_band and report.scored_at:  # a band counts with the time it was scored
        risk = replace(risk, behaviour_band=report.risk_band, behaviour_scored_at=report.scored_at)
    at = min(report.profile_at, ctx.now)
    return replace(account, risk=_with_days_past_due(risk, days, at))


def _with_days_past_due(risk: RiskState, days: int, at: datetime) -> RiskState:
    if days == 0:
        if not risk.past_due and not risk.loans_past_due:
            return risk
        # Cured: every loan is current, and the watchlist's clean period starts again.
        clean_since = max(at, risk.last_warning_at or at)
        return replace(
            risk,
            days_past_due=0,
            loans_past_due={},
            past_due_since=None,
            last_warning_at=clean_since,
        )
    return replace(risk, days_past_due=days, past_due_since=risk.past_due_since or at)


def apply_signal(ctx: Context, account: Account, signal: Signal) -> Decision:
    """Takes in the risk state the signal carries, then the policy's action on the signal."""
    if signal.report is not None:
        account = apply_report(ctx, account, signal.report)
    if signal.type == "on_time_repayment":
        return _on_time_repayment(ctx, account, signal)
    if signal.type in ("delinquency_cured", "behaviour_rescored"):
        return Decision(account, None)  # the report carried what changed
    at = min(signal.detected_at, ctx.now)  # when it happened, never later than now
    account = _record_warning(account, signal, at)
    rules = ctx.policy.actions_for(signal.type, signal.severity, signal.days_past_due)
    if not rules:
        return Decision(account, None)
    rule = rules[-1]  # the strongest action the signal triggers
    reason = policy_reason(SIGNAL_REASONS[signal.type])
    status, line = account.status, account.line.credit_line
    if rule.action is SignalAction.close and status is not AccountStatus.closed:
        after = _suspend(account, AccountStatus.closed, at)
        kind = EventType.closed
    elif rule.action is SignalAction.freeze and status in ledger.DRAWS_ALLOWED:
        after = _suspend(account, AccountStatus.frozen, at)
        kind = EventType.frozen
    elif (
        rule.action is SignalAction.reduce
        and rule.line_fraction is not None  # always, for a reduce (the policy checks)
        and status in ledger.DRAWS_ALLOWED
        and line > 0
    ):
        # The new line holds even below what is drawn: the account is then over its line.
        after = _with_line(account, math.floor(line * rule.line_fraction))
        kind = EventType.reduced
    elif rule.action is SignalAction.watchlist and status is AccountStatus.active:
        after = replace(account, line=ledger.set_status(account.line, AccountStatus.watchlist))
        kind = EventType.watchlisted
    else:
        return Decision(account, None)  # the account is already under a stronger action
    after = replace(after, on_time_streak=0)
    event = _event(ctx, account, after, kind, [reason], details={"signal_id": signal.signal_id})
    return Decision(after, event)


def _record_warning(account: Account, signal: Signal, at: datetime) -> Account:
    """A warning restarts the watchlist's clean period and the on-time streak."""
    risk = replace(account.risk, last_warning_at=max(at, account.risk.last_warning_at or at))
    if signal.type == "days_past_due":
        days = max(risk.days_past_due, signal.days_past_due)
        risk = _with_days_past_due(risk, days, at)
        if signal.loan_id:
            loans = dict(risk.loans_past_due)
            loans[signal.loan_id] = max(loans.get(signal.loan_id, 0), signal.days_past_due)
            risk = replace(risk, loans_past_due=loans)
    elif signal.type == "abnormal_transaction" and risk.anomaly_since is None:
        risk = replace(risk, anomaly_since=at)
    return replace(account, risk=risk, on_time_streak=0)


def _on_time_repayment(ctx: Context, account: Account, signal: Signal) -> Decision:
    """Counts the repayment towards rewards and reopening stages. It cures only the loan it
    paid; the account is current only when monitoring reports it so."""
    loans = dict(account.risk.loans_past_due)
    loans.pop(signal.loan_id, None)
    account = replace(
        account,
        on_time_streak=account.on_time_streak + 1,
        last_on_time_repayment_at=min(signal.detected_at, ctx.now),
        risk=replace(account.risk, loans_past_due=loans),
    )
    policy, reopening = ctx.policy, ctx.policy.reopening
    details = {"signal_id": signal.signal_id}
    stage = account.reopening_stage
    if 0 < stage < len(reopening.stages):
        needed = reopening.stages[stage - 1].advance_after_on_time_repayments
        if (
            needed is not None  # always, before the last stage (the policy checks)
            and account.on_time_streak >= needed
            and account.status in ledger.DRAWS_ALLOWED
            and not account.risk.past_due
        ):
            stage_line = _stage_line(policy, account, stage + 1)
            priced_as = policy.tier_named(account.tier)
            if priced_as is not None:  # a stage raises the line only as far as is affordable
                stage_line = _affordable_raise(policy, account, stage_line, priced_as)
            advanced = replace(_with_line(account, stage_line), reopening_stage=stage + 1)
            reasons = [policy_reason("POLICY_GOOD_REPAYMENT")]
            kind = EventType.reopening_stage_advanced
            return Decision(
                advanced, _event(ctx, account, advanced, kind, reasons, details=details)
            )
        return Decision(account, None)
    band = fresh_behaviour_band(policy, account, ctx.now)
    tier = policy.managed_tier(band) if band else None
    if (
        band is not None
        and tier is not None
        and policy.tier_rank(tier.name) <= policy.tier_rank(account.tier)
        and account.on_time_streak >= policy.reward.consecutive_on_time_repayments
        and months_on_book(account, ctx.now) >= policy.reward.min_months_on_book
        and _may_increase(policy, account, tier, ctx.now)
        and account.line.credit_line < tier.max_line
    ):
        # Priced as the account's own tier is; no step the declared income cannot carry.
        priced_as = policy.tier_named(account.tier) or tier
        step = min(account.line.credit_line + tier.increase_step, tier.max_line)
        target = _affordable_raise(policy, account, step, priced_as)
        if target <= account.line.credit_line:
            return Decision(account, None)
        raised = _with_line(account, target)
        reasons = [policy_reason("POLICY_GOOD_REPAYMENT")]
        return Decision(
            raised, _event(ctx, account, raised, EventType.increased, reasons, details=details)
        )
    return Decision(account, None)


def fresh_behaviour_band(policy: Policy, account: Account, now: datetime) -> str | None:
    """The behaviour band monitoring scored, where both it and the profile are fresh."""
    risk = account.risk
    if risk.behaviour_band is None or risk.behaviour_scored_at is None:
        return None
    if not is_fresh(policy, risk, now):
        return None
    if now - risk.behaviour_scored_at > timedelta(days=policy.risk_state.max_age_days):
        return None
    return risk.behaviour_band


# -- reopening -----------------------------------------------------------------------------


def request_reopen(ctx: Context, account: Account, score: Score | None) -> Decision:
    """Reopens a closed or frozen line at stage 1, with the stage's own line (even below what
    is drawn), when every eligibility rule holds; `score` is None when the risk state is not
    fresh."""
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
    if account.risk.past_due:
        reasons.append(policy_reason("POLICY_DAYS_PAST_DUE"))
    last_on_time = account.last_on_time_repayment_at
    if last_on_time is None or now - last_on_time > timedelta(
        days=rules.max_days_since_last_on_time_repayment
    ):
        reasons.append(policy_reason("POLICY_NO_RECENT_ON_TIME_REPAYMENT"))
    if account.risk.anomaly_since is not None:
        reasons.append(policy_reason("POLICY_OPEN_ANOMALY"))
    if score is None:
        reasons.append(policy_reason("POLICY_NO_RECENT_HISTORY"))
    elif _band_worse(score.risk_band, rules.worst_risk_band):
        reasons.append(policy_reason("POLICY_RISK_NOT_IMPROVED"))
        reasons.extend(score.reasons)
    if reasons or score is None:
        event = _event(ctx, account, account, EventType.reopen_declined, reasons, score)
        return Decision(account, event, approved=False, next_eligible_at=next_eligible_at)
    tier = ctx.policy.managed_tier(score.risk_band)
    reopened = replace(
        account,
        line=replace(account.line, status=AccountStatus.active, in_hardship=False),
        reopening_stage=1,
        risk_band=score.risk_band,
        tier=tier.name if tier else account.tier,
        annual_rate_bp=tier.annual_rate_bp if tier else account.annual_rate_bp,
        on_time_streak=0,
        line_before_closure=account.line_before_closure or account.line.credit_line,
    )
    stage_line = _stage_line(ctx.policy, reopened, 1)
    if tier is not None and stage_line > account.line.credit_line:  # more than before: affordable?
        stage_line = _affordable_raise(ctx.policy, reopened, stage_line, tier)
    reopened = _with_line(reopened, stage_line)
    event = _event(ctx, account, reopened, EventType.reopened, list(score.reasons), score)
    return Decision(reopened, event)


def _stage_line(policy: Policy, account: Account, stage_number: int) -> int:
    stage = policy.reopening.stages[stage_number - 1]
    if stage.line is not None:
        line = stage.line
    elif stage.former_line_fraction is not None:
        line = math.floor((account.line_before_closure or 0) * stage.former_line_fraction)
    else:
        tier = policy.managed_tier(account.risk_band or "E")
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


def resolve_anomaly(ctx: Context, account: Account, note: str) -> Decision:
    if account.risk.anomaly_since is None:
        raise FailedPrecondition("the account has no open anomaly", reason="NO_OPEN_ANOMALY")
    after = replace(account, risk=replace(account.risk, anomaly_since=None))
    return Decision(after, _operator_event(ctx, account, after, EventType.anomaly_resolved, note))


# -- the ledger ------------------------------------------------------------------------------


def draw(ctx: Context, account: Account, amount: int, purpose: str) -> Account:
    """Occupies credit for a loan: never above the line, never while past due."""
    if purpose in ctx.policy.prohibited_purposes:
        raise FailedPrecondition(
            f"a consumer credit line may not fund {purpose}",
            reason="PROHIBITED_PURPOSE",
            metadata={"purpose": purpose},
        )
    return replace(account, line=ledger.draw(account.line, amount))


def repay(ctx: Context, account: Account, amount: int) -> Decision:
    """Releases credit; the repayment that brings an over line back under it is an event."""
    after = replace(account, line=ledger.repay(account.line, amount))
    if account.over_line and not after.over_line:
        reasons = [policy_reason("POLICY_REPAID_UNDER_LINE")]
        return Decision(after, _event(ctx, account, after, EventType.back_within_line, reasons))
    return Decision(after, None)


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
        monthly_instalment=monthly_instalment(
            account.line.drawn, rate_of(ctx.policy, account), term_months
        ),
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


def reverse(
    ctx: Context,
    account: Account,
    appealed: LimitEvent,
    later: list[LimitEvent],
    appeal_id: str = "",
) -> Decision:
    """A new decision on the account as it is now, undoing what the appealed decision took
    where nothing decided since has changed it: the line where no later event moved it, the
    status where no later event moved it. A line closed since stays closed (it reopens through
    the staged reopening)."""
    line_moved_since = any(e.line_before != e.line_after for e in later)
    status_moved_since = any(e.status_before != e.status_after for e in later)
    after = account
    restored = []
    if (
        not line_moved_since
        and appealed.line_before > appealed.line_after
        and account.status not in (AccountStatus.closed, AccountStatus.declined)
    ):
        after = replace(after, line=ledger.change_line(after.line, appealed.line_before))
        restored.append("line")
    if (
        not status_moved_since
        and appealed.status_before != appealed.status_after
        and account.status is appealed.status_after
        and appealed.status_before in (AccountStatus.active, AccountStatus.watchlist)
    ):
        after = replace(after, line=ledger.set_status(after.line, appealed.status_before))
        if appealed.status_after is AccountStatus.closed:
            after = replace(after, reopening_stage=0)
        restored.append("status")
    reasons = [policy_reason("POLICY_APPEAL_REVERSED")]
    details = {"appealed_event_id": appealed.event_id, "restored": ",".join(restored) or "none"}
    if appeal_id:
        details["appeal_id"] = appeal_id
    event = _event(ctx, account, after, EventType.appeal_reversed, reasons, details=details)
    return Decision(after, event)


# -- helpers -------------------------------------------------------------------------------


def months_on_book(account: Account, now: datetime) -> int:
    opened = account.opened_at
    months = (now.year - opened.year) * 12 + now.month - opened.month
    return months - (now.day < opened.day)


def add_months(moment: datetime, months: int) -> datetime:
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    # The 31st of a shorter month is its last day.
    last_day = calendar.monthrange(year, month)[1]
    return moment.replace(year=year, month=month, day=min(moment.day, last_day))


def in_hardship(account: Account, now: datetime) -> bool:
    return account.hardship is not None and now < account.hardship.ends_at


def current(account: Account, policy: Policy, now: datetime) -> Account:
    """The account as of `now` under `policy`: a hardship arrangement that has ended no longer
    pauses draws, and draws stop while a payment is past due beyond the policy's limit."""
    line = account.line
    if line.in_hardship and not in_hardship(account, now):
        line = replace(line, in_hardship=False)
    stopped = account.risk.days_past_due >= policy.draws.stop_at_days_past_due
    if stopped != line.draws_stopped:
        line = replace(line, draws_stopped=stopped)
    return account if line is account.line else replace(account, line=line)


def _may_increase(policy: Policy, account: Account, tier: Tier, now: datetime) -> bool:
    return (
        account.status is AccountStatus.active
        and account.automatic_increases
        and not account.risk.past_due
        and not 0 < account.reopening_stage < len(policy.reopening.stages)
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


def not_yet(reason: str, why: str, eligible_at: datetime) -> FailedPrecondition:
    return FailedPrecondition(
        f"{why}; the next request can be considered from {eligible_at.isoformat()}",
        reason=reason,
        metadata={"next_eligible_time": eligible_at.isoformat()},
    )


def _with_line(account: Account, new_line: int, **changes) -> Account:
    """The account with its line changed to `new_line`, and the other `changes` made."""
    if new_line != account.line.credit_line:
        changes["on_time_streak"] = 0  # a line change starts the streak again
    return replace(account, line=ledger.change_line(account.line, new_line), **changes)


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
    if score is not None and score.clamped:
        details = {**(details or {}), "clamped_features": ",".join(score.clamped)}
    if kind in (EventType.reopened, EventType.reopening_stage_advanced):
        details = {**(details or {}), "reopening_stage": str(after.reopening_stage)}
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
        annual_rate_bp=after.annual_rate_bp,
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


# -- conditions and their exits --------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """A condition the account is in, and its way out."""

    type: str  # watchlist, frozen, closed, past_due, over_line, anomaly_open, hardship, ...
    since: datetime | None
    exit: dict[str, str]  # what takes the account out of it, by locale
    earliest_exit_at: datetime | None = None


# The exit of each condition, as the customer and operators are told it (README: "States and
# their exits" says the same).
CONDITION_EXITS = {
    "watchlist": (
        "Leaves the watchlist once no payment is past due and no warning sign came for the "
        "policy's clean period",
        "还款恢复正常且在规定期限内未出现新的风险信号后，自动解除观察",
    ),
    "frozen": (
        "An operator lifts the freeze, or the line reopens in stages (RequestReopen)",
        "由运营人员解除冻结，或通过分阶段恢复申请重新开通",
    ),
    "closed": (
        "Reopens in stages through RequestReopen once eligible",
        "符合条件后可申请分阶段重新开通",
    ),
    "past_due": ("Repay what is past due", "还清逾期款项"),
    "over_line": (
        "Repayments bring the balance under the line",
        "还款使欠款低于信用额度",
    ),
    "anomaly_open": (
        "Our team resolves the anomaly with you",
        "由我们的团队与您核实并解决异常",
    ),
    "hardship": ("The arrangement ends at its end date", "困难还款安排到期后结束"),
    "reopening_stage": (
        "On-time repayments at each stage open the next",
        "每个阶段按时还款后进入下一阶段",
    ),
}


def conditions(policy: Policy, account: Account, now: datetime) -> list[Condition]:
    """Every condition the account is in now, each with what ends it."""
    found: list[tuple[str, datetime | None, datetime | None]] = []
    risk = account.risk
    if account.status is AccountStatus.watchlist:
        found.append(("watchlist", risk.last_warning_at, watchlist_lifts_at(policy, account)))
    if account.status in (AccountStatus.frozen, AccountStatus.closed):
        found.append((account.status.value, account.suspended_at, None))
    if risk.past_due:
        found.append(("past_due", risk.past_due_since, None))
    if account.over_line:
        found.append(("over_line", None, None))
    if risk.anomaly_since is not None:
        found.append(("anomaly_open", risk.anomaly_since, None))
    if account.hardship is not None and in_hardship(account, now):
        found.append(("hardship", account.hardship.started_at, account.hardship.ends_at))
    if 0 < account.reopening_stage < len(policy.reopening.stages):
        found.append(("reopening_stage", None, None))
    return [
        Condition(kind, since, dict(zip(("en", "zh-CN"), CONDITION_EXITS[kind], strict=True)), at)
        for kind, since, at in found
    ]

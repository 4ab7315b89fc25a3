"""Early collections treatment: what to do now about an account past due, as a pure function
of the account, its treatment so far, the policy's `collections` and the time.

A delinquency is one episode, from the day a payment fell past due (`RiskState.past_due_since`)
to its cure. Within it, each run may add one step: a contact of the day's bucket (a reminder, a
call, an offer of a hardship arrangement, a formal notice, a hand-off to an agency) when that
bucket's `every_days` has passed since its last contact, fewer than `contact_cap_per_week`
contacts were made in the last 7 days, and it is not the quiet hours of the customer's time
zone; or a stop, said once: the delinquency was cured, a hardship arrangement runs, an appeal
is open. A stop for a hardship or an appeal lasts while it does; contacts resume after it if
the account is still past due. Nothing here stores or sends.
"""

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from services.limits.decisions import in_hardship
from services.limits.policy import Collections, QuietHours
from services.limits.records import Account, Reason, ReasonSource


class StepKind(StrEnum):
    contact = "contact"
    stopped = "stopped"


class StopReason(StrEnum):
    cured = "cured"
    hardship = "hardship"
    appeal_open = "appeal_open"


# The reason each step gives, in every locale: code -> (English, Chinese).
STEP_REASONS = {
    "reminder": ("A payment is {overdue} overdue", "您有一笔还款已逾期{days}天"),
    "call": (
        "A payment is {overdue} overdue: we will call",
        "您有一笔还款已逾期{days}天，我们将致电联系",
    ),
    "hardship_offer": (
        "A payment is {overdue} overdue: a hardship repayment arrangement can help",
        "您有一笔还款已逾期{days}天，可申请困难还款安排",
    ),
    "formal_notice": (
        "A payment is {overdue} overdue: formal notice",
        "您有一笔还款已逾期{days}天，特此正式通知",
    ),
    "agency_handoff": (
        "A payment is {overdue} overdue: passed to a collections agency",
        "您有一笔还款已逾期{days}天，已转交催收机构",
    ),
    StopReason.cured: ("The overdue payments were made", "逾期款项已还清"),
    StopReason.hardship: ("A hardship arrangement is running", "困难还款安排进行中"),
    StopReason.appeal_open: ("An appeal is being reviewed", "申诉正在复核中"),
}


@dataclass(frozen=True)
class TreatmentStep:
    """One step of an account's treatment, with why."""

    account_id: str
    # The delinquency it belongs to: when its payment fell past due.
    episode_started_at: datetime
    kind: StepKind
    days_past_due: int
    reason: Reason
    created_at: datetime
    action: str = ""  # a TreatmentAction, for a contact
    channel: str = ""  # a ContactChannel, for a contact
    stop_reason: StopReason | None = None
    # A hardship offer links to EnrollHardship: the customer may enrol from it.
    offers_hardship: bool = False
    # Given when it is stored: its id, its place in the outbox (the stream's cursor), the
    # time zone its quiet hours were kept in, the policy that decided it; and when the
    # collections system reported it carried out.
    step_id: str = ""
    number: int = 0
    time_zone: str = ""
    policy_version: str = ""
    carried_out_at: datetime | None = None

    @property
    def key(self) -> str:
        """Unique per account: at most one step of a kind a day in an episode, so a run
        repeated (or run by two replicas) adds nothing."""
        day = (self.created_at - self.episode_started_at).days
        what = self.action if self.kind is StepKind.contact else f"stop-{self.stop_reason}"
        return f"{self.episode_started_at.isoformat()}/{day}/{what}"


def days_past_due_now(account: Account, now: datetime) -> int:
    """Days past due today: the days since the payment fell due, or what monitoring last
    reported, whichever is more."""
    risk = account.risk
    if not risk.past_due or risk.past_due_since is None:
        return risk.days_past_due
    return max(risk.days_past_due, (now - risk.past_due_since).days + 1)


def next_step(
    rules: Collections,
    account: Account,
    earlier: list[TreatmentStep],
    appeal_open: bool,
    now: datetime,
    time_zone: str | None = None,
) -> TreatmentStep | None:
    """The step to take now, or None. `earlier` is the account's treatment so far, oldest
    first; only its latest episode counts."""
    last = earlier[-1] if earlier else None
    risk = account.risk
    if not risk.past_due or risk.past_due_since is None:
        # A cure ends the treatment of an episode, once, and says so.
        if last is not None and last.stop_reason is not StopReason.cured:
            return _stop(account, last.episode_started_at, StopReason.cured, 0, now)
        return None
    episode = risk.past_due_since
    steps = [s for s in earlier if s.episode_started_at == episode]
    latest = steps[-1] if steps else None
    days = days_past_due_now(account, now)
    for holds, why in (
        (in_hardship(account, now), StopReason.hardship),
        (appeal_open, StopReason.appeal_open),
    ):
        if holds:
            if latest is not None and latest.stop_reason is why:
                return None  # said already; silent while it lasts
            return _stop(account, episode, why, days, now)
    treatment = rules.treatment_at(days)
    if treatment is None:
        return None
    contacts = [s for s in steps if s.kind is StepKind.contact]
    same = [s for s in contacts if s.action == treatment.action]
    if same and now - same[-1].created_at < timedelta(days=treatment.every_days):
        return None
    week = [s for s in earlier if s.kind is StepKind.contact and now - s.created_at < _WEEK]
    if len(week) >= rules.contact_cap_per_week:
        return None
    if _in_quiet_hours(rules.quiet_hours, now, time_zone or rules.default_time_zone):
        return None
    en, zh = STEP_REASONS[treatment.action]
    return TreatmentStep(
        account_id=account.account_id,
        episode_started_at=episode,
        kind=StepKind.contact,
        days_past_due=days,
        reason=_reason(f"COLLECTIONS_{treatment.action.upper()}", en, zh, days),
        created_at=now,
        action=treatment.action.value,
        channel=treatment.channel.value,
        offers_hardship=treatment.action == "hardship_offer",
    )


_WEEK = timedelta(days=7)


def _stop(
    account: Account, episode: datetime, why: StopReason, days: int, now: datetime
) -> TreatmentStep:
    en, zh = STEP_REASONS[why]
    return TreatmentStep(
        account_id=account.account_id,
        episode_started_at=episode,
        kind=StepKind.stopped,
        days_past_due=days,
        reason=_reason(f"COLLECTIONS_STOPPED_{why.upper()}", en, zh, days),
        created_at=now,
        stop_reason=why,
    )


def _reason(code: str, en: str, zh: str, days: int) -> Reason:
    overdue = "1 day" if days == 1 else f"{days} days"
    return Reason(
        code, {"en": en.format(overdue=overdue), "zh-CN": zh.format(days=days)}, ReasonSource.policy
    )


def _in_quiet_hours(quiet: QuietHours, now: datetime, time_zone: str) -> bool:
    local = now.astimezone(ZoneInfo(time_zone)).time()
    return _between(local, quiet.start, quiet.end)


def _between(moment: time, start: time, end: time) -> bool:
    if start <= end:
        return start <= moment < end
    return moment >= start or moment < end  # spans midnight

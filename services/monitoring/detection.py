"""Detection: one event folded into an account's profile, and the signals the rules raise.

Pure and transport-free. Every signal belongs to an episode: a delinquency until it is cured,
a run of partial payments until a full one, a burst of inquiries until the window empties.
An episode raises its signal once (again only at a higher severity), and each type has a
cool-off on top, so one episode is one signal, not one per event. Signal ids are derived from
the event that raised them, so replaying events can never raise a signal twice.
"""

import hashlib
from dataclasses import dataclass, field, replace

from services.monitoring.profile import (
    DAY,
    MOVES_UTILISATION,
    AccountState,
    Event,
    EventKind,
    Keep,
    Timing,
    count_since,
    record,
    robust_z,
    trim_incomes,
    utilisation,
)
from services.monitoring.rules import Rules, Severity

BANDS = "ABCDE"
# Signal types whose episode ends when its cool-off does: nothing later undoes what was seen.
EPISODES_ENDING_WITH_COOL_OFF = frozenset({"abnormal_transaction", "risk_band_worsened"})


@dataclass(slots=True)
class Raised:
    """A signal the rules raised on an account (not frozen: ingestion sets the profile of
    hundreds per batch, where a copy each would cost more than the rule that raised it)."""

    signal_id: str
    account_id: str
    type: str
    severity: Severity
    detected_at: float
    event_id: str
    evidence: dict[str, str]
    # The account's features once the batch that raised it is applied (filled in by ingestion).
    profile: dict[str, float] = field(default_factory=dict)
    risk_band: str = ""
    report: bool = True


def signal_id(*parts: object) -> str:
    return "sig_" + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:32]


def keep_for(rules: Rules) -> Keep:
    """The history `rules` need (computed once per rules object: every event asks)."""
    global _kept
    kept = _kept
    if kept is not None and kept[0] is rules:
        return kept[1]
    keep = Keep(
        inquiry_days=max(w.window_days for w in rules.multiple_lending.windows),
        utilisation_days=rules.utilisation.window_days,
        income_days=rules.income_decline.window_days,
        draw_hours=rules.abnormal_transaction.burst_hours,
        transactions=rules.abnormal_transaction.history_size,
    )
    _kept = (rules, keep)
    return keep


_kept: tuple[Rules, Keep] | None = None


def new_account(event: Event) -> AccountState:
    return AccountState(account_id=event.account_id, opened_at=event.at)


def process(state: AccountState, event: Event, rules: Rules) -> list[Raised]:
    """Applies `event` (next in sequence) to `state`; returns the signals it raises."""
    detector = _Detector(state, event, rules)
    dpd_before, worst_before = state.days_past_due, state.worst_days_past_due
    kind = event.kind
    keep = keep_for(rules)
    amounts_before = list(state.amounts) if kind is EventKind.transaction else []
    income_reference = _income_reference(state, event, rules, keep)
    record(state, event, keep)
    if state.episodes:
        detector.end_expired_episodes()

    if state.days_past_due != dpd_before:
        detector.days_past_due(dpd_before, worst_before)
    if kind is EventKind.repayment:
        detector.repayment()
    if kind is EventKind.credit_inquiry or "multiple_lending" in state.episodes:
        detector.multiple_lending()
    if kind in MOVES_UTILISATION:
        detector.utilisation()
    if kind is EventKind.income_updated:
        detector.income(income_reference)
    if kind is EventKind.transaction:
        detector.transaction(amounts_before)
    if kind is EventKind.line_drawn:
        detector.draw_burst()
    return detector.raised


@dataclass(frozen=True, slots=True)
class ScoredProfile:
    """An account's profile as the behaviour model scored it (events may have moved the
    account on since)."""

    version: int  # the account's profile_version then
    at: float  # the event time it describes
    features: dict[str, float]


def rescored(
    state: AccountState, scored: ScoredProfile, new_band: str, model_version: str, rules: Rules
) -> list[Raised]:
    """The signals a new score raises: `behaviour_rescored` every time (the band and the
    profile scored, which limits keeps as the account's risk state), and `risk_band_worsened`
    too when the band is worse than the last one by enough steps."""
    if not new_band:
        return []
    event = Event(
        event_id=f"{state.account_id}/rescore/{scored.version}/{model_version}",
        account_id=state.account_id,
        sequence=state.last_sequence,
        at=scored.at,
        kind=EventKind.account_opened,  # unused: rescoring raises without an event
    )
    detector = _Detector(state, event, rules, risk_band=new_band)
    detector.raise_signal(
        "behaviour_rescored",
        Severity.info,
        {"risk_band": new_band, "model_version": model_version},
        episode=False,
    )
    old_band = state.risk_band
    steps = BANDS.index(new_band) - BANDS.index(old_band) if old_band else 0
    if steps >= rules.risk_band.min_steps:
        detector.end_expired_episodes()
        detector.raise_signal(
            "risk_band_worsened",
            rules.risk_band.severity,
            {"from_band": old_band, "to_band": new_band, "model_version": model_version},
        )
    elif steps < 0:
        detector.end_episode("risk_band_worsened")
    # No event raised them: they describe the profile scored, as of its own time.
    return [
        replace(r, event_id="", detected_at=scored.at, profile=scored.features)
        for r in detector.raised
    ]


def _income_reference(state: AccountState, event: Event, rules: Rules, keep: Keep) -> float:
    """The highest income of the rule's window before this event (0 when none is known)."""
    if event.kind is not EventKind.income_updated:
        return 0.0
    # The readings as of the previous event: the oldest of them count here.
    trim_incomes(state, state.last_event_at, keep)
    since = event.at - rules.income_decline.window_days * DAY
    recent = [income for at, income in state.incomes if at > since]
    if state.incomes:  # the reading in force at the window's start counts too
        recent.append(max((i for at, i in state.incomes if at <= since), default=0))
    return float(max(recent, default=0))


class _Detector:
    def __init__(self, state: AccountState, event: Event, rules: Rules, risk_band: str = ""):
        self.state = state
        self.event = event
        self.rules = rules
        self.risk_band = risk_band or state.risk_band
        self.raised: list[Raised] = []

    # -- the rules -------------------------------------------------------------------------

    def days_past_due(self, before: int, worst_before: int) -> None:
        days = self.state.days_past_due
        if days == 0:
            for threshold in self.rules.days_past_due.thresholds:
                self.end_episode(f"days_past_due_{threshold.days}")
            if before and worst_before >= self.rules.delinquency_cured.min_days_past_due:
                self.raise_signal(
                    "delinquency_cured",
                    Severity.info,
                    {"worst_days_past_due": str(worst_before)},
                    episode=False,
                )
            return
        for threshold in self.rules.days_past_due.thresholds:
            if before < threshold.days <= days:
                self.raise_signal(
                    f"days_past_due_{threshold.days}",
                    threshold.severity,
                    {"days_past_due": str(days), "threshold_days": str(threshold.days)},
                )

    def repayment(self) -> None:
        state, rule = self.state, self.rules.partial_payments
        if self.event.timing is Timing.partial:
            if state.consecutive_partials >= rule.consecutive:
                self.raise_signal(
                    "partial_payments",
                    rule.severity,
                    {"consecutive_partial_payments": str(state.consecutive_partials)},
                )
            return
        self.end_episode("partial_payments")
        if self.event.timing is Timing.on_time:
            streak = str(state.on_time_streak)
            self.raise_signal(
                "on_time_repayment", Severity.info, {"on_time_streak": streak}, episode=False
            )
            if state.on_time_streak in self.rules.on_time.streak_milestones:
                self.raise_signal(
                    "on_time_streak", Severity.info, {"on_time_streak": streak}, episode=False
                )

    def multiple_lending(self) -> None:
        now = self.state.last_event_at
        matched = [
            (window, count)
            for window in self.rules.multiple_lending.windows
            if (count := count_since(self.state.inquiries, now - window.window_days * DAY))
            >= window.min_inquiries
        ]
        if not matched:
            self.end_episode("multiple_lending")
            return
        window, count = max(matched, key=lambda m: m[0].severity)
        self.raise_signal(
            "multiple_lending",
            window.severity,
            {"inquiries": str(count), "window_days": str(window.window_days)},
        )

    def utilisation(self) -> None:
        rule = self.rules.utilisation
        now_use = utilisation(self.state)
        lowest = min((p[1] for p in self.state.utilisation_points), default=now_use)
        rise = now_use - lowest
        if now_use >= rule.at_least:
            evidence = {"utilisation": f"{now_use:.2f}", "at_least": str(rule.at_least)}
        elif rise >= rule.rise:
            evidence = {"rise": f"{rise:.2f}", "window_days": str(rule.window_days)}
        else:
            self.end_episode("utilisation_spike")
            return
        self.raise_signal("utilisation_spike", rule.severity, evidence)

    def income(self, reference: float) -> None:
        rule = self.rules.income_decline
        income = self.state.monthly_income
        if reference <= 0:
            return
        drop = 1.0 - income / reference
        if drop < rule.at_least:
            self.end_episode("income_decline")
            return
        self.raise_signal("income_decline", rule.severity, {"decline": f"{drop:.2f}"})

    def transaction(self, history: list[int]) -> None:
        rule = self.rules.abnormal_transaction
        if len(history) < rule.min_history:
            return
        z = robust_z(self.event.amount, history)
        if z >= rule.robust_z:
            self.raise_signal(
                "abnormal_transaction",
                rule.severity,
                {"robust_z": f"{z:.1f}", "history": str(len(history)), "kind": "amount"},
            )

    def draw_burst(self) -> None:
        rule = self.rules.abnormal_transaction
        if len(self.state.draws) >= rule.burst_draws:
            self.raise_signal(
                "abnormal_transaction",
                rule.severity,
                {"draws": str(len(self.state.draws)), "hours": str(rule.burst_hours)},
            )

    # -- episodes and cool-offs ---------------------------------------------------------------

    def raise_signal(
        self, kind: str, severity: Severity, evidence: dict[str, str], episode: bool = True
    ) -> None:
        state, now = self.state, self.state.last_event_at
        spec = self.rules.signals[kind]
        # Quiet while the episode is open or the cool-off runs, unless this is more severe.
        open_episode = state.episodes.get(kind)
        last_time, last_severity = state.last_raised.get(kind, (None, 0))
        cooling = last_time is not None and now - last_time < spec.cool_off_days * DAY
        if (open_episode or cooling) and severity <= last_severity:
            return
        if self.event.loan_id:  # limits tracks delinquency and repayment per loan
            evidence["loan_id"] = self.event.loan_id
        raised = Raised(
            signal_id=signal_id(self.event.event_id, kind, int(severity)),
            account_id=state.account_id,
            type=kind,
            severity=severity,
            detected_at=now,
            event_id=self.event.event_id,
            evidence=evidence,
            risk_band=self.risk_band,
            report=spec.report,
        )
        if episode:
            state.episodes[kind] = {"signal_id": raised.signal_id, "severity": int(severity)}
        state.last_raised[kind] = [now, int(severity)]
        self.raised.append(raised)

    def end_episode(self, kind: str) -> None:
        self.state.episodes.pop(kind, None)

    def end_expired_episodes(self) -> None:
        now = self.state.last_event_at
        for kind in EPISODES_ENDING_WITH_COOL_OFF & self.state.episodes.keys():
            cool_off = self.rules.signals[kind].cool_off_days * DAY
            if now - self.state.last_raised.get(kind, [now])[0] >= cool_off:
                del self.state.episodes[kind]

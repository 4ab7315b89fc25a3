"""An account's behaviour profile, kept incrementally from its repayment events.

`AccountState` holds just enough history to answer every behaviour-model feature over rolling
windows (7, 30, 90, 180 and 365 days) without rereading old events: dated points of days past
due, the dates of inquiries and partial payments, income readings, recent utilisation and
transaction amounts. `record` folds one event in and trims the history it added to (a history
no event touched may keep entries that aged out until one does: every reader applies its window
again, so they cost only size); `features` computes the model's inputs at the account's latest
event time. All times are the events' own (epoch seconds), so replaying the same events gives
the same profile, and each history is in time order.
"""

import dataclasses
import statistics
from bisect import bisect_right
from dataclasses import dataclass, field
from enum import StrEnum
from operator import itemgetter

import orjson

DAY = 86_400.0
MONTH_DAYS = 30  # the simulator the behaviour model was trained on counts 30-day months
# Days past due that start the 30+, 60+ and 90+ episodes the model counts.
EPISODE_THRESHOLDS = (30, 60, 90)
# Histories older than this are dropped (the longest window, 12 months).
KEEP_DAYS = 365


class EventKind(StrEnum):
    account_opened = "account_opened"
    line_drawn = "line_drawn"
    instalment_due = "instalment_due"
    repayment = "repayment"
    days_past_due_updated = "days_past_due_updated"
    payment_missed = "payment_missed"
    credit_inquiry = "credit_inquiry"
    income_updated = "income_updated"
    transaction = "transaction"
    credit_line_changed = "credit_line_changed"
    account_closed = "account_closed"
    interest_charged = "interest_charged"


class Timing(StrEnum):
    on_time = "on_time"
    late = "late"
    partial = "partial"


@dataclass(frozen=True, slots=True)
class Event:
    """One repayment event, transport-free. Amounts are fen."""

    event_id: str
    account_id: str
    sequence: int
    at: float  # epoch seconds
    kind: EventKind
    amount: int = 0  # the line, a draw, a repayment, an amount due, interest or a transaction
    days_past_due: int | None = None  # where the event reports it
    timing: Timing | None = None  # repayments
    income: int = 0  # monthly income, where the event reports it
    loan_id: str = ""  # the loan it is about, where the event names one


@dataclass(slots=True)
class AccountState:
    """Everything monitoring keeps about one account; stored as one JSON document."""

    account_id: str
    opened_at: float
    last_sequence: int = 0
    last_event_at: float = 0.0
    closed: bool = False
    credit_line: int = 0
    balance: int = 0
    monthly_income: int = 0  # 0 when unknown
    days_past_due: int = 0
    worst_days_past_due: int = 0  # of the current delinquency episode
    dpd_points: list[list[float]] = field(default_factory=list)  # [time, days past due]
    dpd_entries: list[list[float]] = field(default_factory=list)  # [time, threshold entered]
    inquiries: list[float] = field(default_factory=list)
    partials: list[float] = field(default_factory=list)
    consecutive_partials: int = 0
    on_time_streak: int = 0
    incomes: list[list[float]] = field(default_factory=list)  # [time, monthly income]
    utilisation_points: list[list[float]] = field(default_factory=list)  # [time, utilisation]
    amounts: list[int] = field(default_factory=list)  # recent transaction amounts
    draws: list[float] = field(default_factory=list)  # times of recent draws
    # Open episodes by signal type: {"signal_id", "severity", "at"}.
    episodes: dict[str, dict] = field(default_factory=dict)
    # Signal type -> [time, severity] of the last one raised, for cool-offs.
    last_raised: dict[str, list[float]] = field(default_factory=dict)
    profile_version: int = 0
    scored_profile: dict[str, float] | None = None
    rescore_due: bool = False
    # The latest behaviour score: {"probability_of_default", "score", "risk_band", "reasons",
    # "model_version", "at"}.
    score: dict | None = None

    def to_json(self) -> str:
        """The fields as a JSON object by name, with the format's version as `v`: a field
        moved, added or removed never misreads a stored state (one with a field missing takes
        its default). Documents of the first format, a positional array, still read."""
        document: dict[str, object] = {"v": STATE_FORMAT}
        for name in _FIELDS:
            document[name] = getattr(self, name)
        return orjson.dumps(document).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> "AccountState":
        document = orjson.loads(text)
        if isinstance(document, list):
            if _POSITIONAL_IS_DECLARED_ORDER:
                return cls(*document)
            return cls(**dict(zip(_POSITIONAL_FIELDS, document, strict=False)))
        version = document.pop("v", None)
        if version != STATE_FORMAT:
            raise ValueError(f"an account state of format {version!r}, not {STATE_FORMAT}")
        if len(document) == len(_FIELDS):
            try:  # by position: keyword arguments from parsed keys cost twice as much
                return cls(*_field_values(document))
            except KeyError:
                pass
        return cls(**document)

    @property
    def risk_band(self) -> str:
        return self.score["risk_band"] if self.score else ""


_FIELDS = tuple(f.name for f in dataclasses.fields(AccountState))
_field_values = itemgetter(*_FIELDS)
# The stored form of an account state: a JSON object by field name, with this version as `v`.
STATE_FORMAT = 2
# The first stored form was a JSON array of the fields in this order (a newer field last). It
# is frozen here, whatever becomes of the dataclass, so rows written then read the same.
_POSITIONAL_FIELDS = (
    "account_id",
    "opened_at",
    "last_sequence",
    "last_event_at",
    "closed",
    "credit_line",
    "balance",
    "monthly_income",
    "days_past_due",
    "worst_days_past_due",
    "dpd_points",
    "dpd_entries",
    "inquiries",
    "partials",
    "consecutive_partials",
    "on_time_streak",
    "incomes",
    "utilisation_points",
    "amounts",
    "draws",
    "episodes",
    "last_raised",
    "profile_version",
    "scored_profile",
    "rescore_due",
    "score",
)
_POSITIONAL_IS_DECLARED_ORDER = _FIELDS == _POSITIONAL_FIELDS
_time_of = itemgetter(0)
MOVES_UTILISATION = frozenset(
    {
        EventKind.line_drawn,
        EventKind.repayment,
        EventKind.credit_line_changed,
        EventKind.interest_charged,
    }
)


def utilisation(state: AccountState) -> float:
    if state.credit_line > 0:
        return state.balance / state.credit_line
    return 1.0 if state.balance > 0 else 0.0


def record(state: AccountState, event: Event, keep: "Keep") -> None:
    """Folds `event` into `state` (the caller checked its sequence)."""
    now = max(event.at, state.last_event_at)
    state.last_sequence = event.sequence
    state.last_event_at = now
    state.profile_version += 1
    kind = event.kind
    if kind is EventKind.account_opened:
        state.credit_line = event.amount
        if event.income:
            _set_income(state, now, event.income, keep)
    elif kind is EventKind.line_drawn:
        state.balance += event.amount
        state.draws.append(now)
        _drop_until(state.draws, now - keep.draw_hours * 3600)
    elif kind is EventKind.interest_charged:
        state.balance += event.amount
    elif kind is EventKind.repayment:
        state.balance = max(0, state.balance - event.amount)
        if event.timing is Timing.partial:
            state.partials.append(now)
            _drop_until(state.partials, now - 180 * DAY)
            state.consecutive_partials += 1
            state.on_time_streak = 0
        else:
            state.consecutive_partials = 0
            if event.timing is Timing.on_time:
                state.on_time_streak += 1
            else:
                state.on_time_streak = 0
    elif kind is EventKind.credit_inquiry:
        state.inquiries.append(now)
        _drop_until(state.inquiries, now - max(30, keep.inquiry_days) * DAY)
    elif kind is EventKind.income_updated:
        _set_income(state, now, event.income, keep)
    elif kind is EventKind.transaction:
        state.amounts.append(event.amount)
        del state.amounts[: -keep.transactions]
    elif kind is EventKind.credit_line_changed:
        state.credit_line = event.amount
    elif kind is EventKind.account_closed:
        state.closed = True
    if event.days_past_due is not None:
        _set_days_past_due(state, now, event.days_past_due)
    if kind is EventKind.payment_missed:
        state.on_time_streak = 0
    if kind in MOVES_UTILISATION:
        points = state.utilisation_points
        points.append([now, utilisation(state)])
        del points[: bisect_right(points, now - keep.utilisation_days * DAY, key=_time_of)]


@dataclass(frozen=True, slots=True)
class Keep:
    """How much recent history the rules need beyond the model's own 12 months."""

    inquiry_days: float = 30
    utilisation_days: float = 7
    income_days: float = 180
    draw_hours: float = 24
    transactions: int = 50


def _set_income(state: AccountState, now: float, income: int, keep: Keep) -> None:
    state.monthly_income = income
    state.incomes.append([now, income])
    trim_incomes(state, now, keep)


def trim_incomes(state: AccountState, now: float, keep: Keep) -> None:
    """Drops the income readings that had aged out of every window by `now`."""
    _trim_points(state.incomes, now - max(KEEP_DAYS, keep.income_days) * DAY)


def _set_days_past_due(state: AccountState, now: float, days: int) -> None:
    before = state.days_past_due
    if days == before:
        return
    state.days_past_due = days
    state.dpd_points.append([now, days])
    state.worst_days_past_due = max(state.worst_days_past_due, days) if days else 0
    for threshold in EPISODE_THRESHOLDS:
        if before < threshold <= days:
            state.dpd_entries.append([now, threshold])
    if days > 0:
        state.on_time_streak = 0
    year_ago = now - KEEP_DAYS * DAY
    _trim_points(state.dpd_points, year_ago)
    entries = state.dpd_entries
    del entries[: bisect_right(entries, year_ago, key=_time_of)]


def _drop_until(times: list[float], cutoff: float) -> None:
    """Drops the times up to `cutoff` (every history is in time order: `now` never rewinds)."""
    del times[: bisect_right(times, cutoff)]


def _trim_points(points: list[list[float]], cutoff: float) -> None:
    """Drops points older than `cutoff`, keeping the last of them: the value in force then."""
    old = bisect_right(points, cutoff, key=_time_of)
    if old > 1:
        del points[: old - 1]


def value_at(points: list[list[float]], time: float, default: float = 0.0) -> float:
    """The value in force at `time` of a series of [time, value] changes (in time order)."""
    before = bisect_right(points, time, key=_time_of)
    return points[before - 1][1] if before else default


def count_since(times: list[float], since: float) -> int:
    """How many of `times` (in order) are after `since`."""
    return len(times) - bisect_right(times, since)


def _max_since(points: list[list[float]], start: float) -> float:
    """The highest value in force at any time after `start` (0 when there is none)."""
    before = bisect_right(points, start, key=_time_of)
    highest = points[before - 1][1] if before else 0.0
    for point in points[before:]:
        if point[1] > highest:
            highest = point[1]
    return highest


def features(state: AccountState) -> dict[str, float]:
    """The behaviour model's features at the account's latest event time, by name.

    The model is trained on exactly this function's output (the simulator's events folded in by
    `record`). A feature that has no value is absent: with no income known there is no income
    change and no debt to income, and the model scores them in their missing bins.
    """
    now = state.last_event_at
    year_ago = now - KEEP_DAYS * DAY
    points = state.dpd_points
    if points:
        max_dpd_3m = _max_since(points, now - 3 * MONTH_DAYS * DAY)
        max_dpd_6m = _max_since(points, now - 6 * MONTH_DAYS * DAY)
        max_dpd_12m = _max_since(points, year_ago)
        in_force_year_ago = value_at(points, year_ago)
        entered = [t for at, t in state.dpd_entries if at > year_ago]
        episodes = [
            entered.count(threshold) + (in_force_year_ago >= threshold)
            for threshold in EPISODE_THRESHOLDS
        ]
    else:  # never late (entries are only ever added with a point)
        max_dpd_3m = max_dpd_6m = max_dpd_12m = 0.0
        episodes = [0, 0, 0]
    income = state.monthly_income
    incomes = state.incomes
    earlier = value_at(incomes, now - 180 * DAY, incomes[0][1] if incomes else 0)
    profile = {
        "utilisation": utilisation(state),
        "days_past_due": float(state.days_past_due),
        "max_dpd_3m": float(max_dpd_3m),
        "max_dpd_6m": float(max_dpd_6m),
        "max_dpd_12m": float(max_dpd_12m),
        "dpd30_episodes_12m": float(episodes[0]),
        "dpd60_episodes_12m": float(episodes[1]),
        "dpd90_episodes_12m": float(episodes[2]),
        "on_time_streak": float(state.on_time_streak),
        "partial_payments_6m": float(count_since(state.partials, now - 180 * DAY)),
        "inquiries_7d": float(count_since(state.inquiries, now - 7 * DAY)),
        "inquiries_30d": float(count_since(state.inquiries, now - 30 * DAY)),
        "months_on_book": float(int((now - state.opened_at) // (MONTH_DAYS * DAY)) + 1),
    }
    if income:
        if earlier:
            profile["income_change"] = income / earlier - 1.0
        profile["debt_to_income"] = state.balance / (12.0 * income)
    return profile


# Features compared exactly for a material change; the others by the rules' thresholds.
COUNT_FEATURES = frozenset(
    {
        "days_past_due",
        "max_dpd_3m",
        "max_dpd_6m",
        "max_dpd_12m",
        "dpd30_episodes_12m",
        "dpd60_episodes_12m",
        "dpd90_episodes_12m",
        "on_time_streak",
        "partial_payments_6m",
        "inquiries_7d",
        "inquiries_30d",
        "months_on_book",
    }
)


def moved_materially(
    profile: dict[str, float], scored: dict[str, float] | None, numeric_change: dict[str, float]
) -> bool:
    """Whether `profile` differs enough from the one last scored to be scored again."""
    if scored is None or profile.keys() != scored.keys():  # a value became known or unknown
        return True
    for name, value in profile.items():
        before = scored[name]
        if name in COUNT_FEATURES:
            if value != before:
                return True
        elif abs(value - before) >= numeric_change.get(name, 0.0) and value != before:
            return True
    return False


def robust_z(amount: float, history: list[int]) -> float:
    """0.6745 (x - median) / MAD; the MAD is floored so a flat history still compares."""
    median = statistics.median(history)
    mad = statistics.median(abs(x - median) for x in history)
    floor = max(abs(median) * 0.01, 1.0)
    return 0.6745 * (amount - median) / max(mad, floor)

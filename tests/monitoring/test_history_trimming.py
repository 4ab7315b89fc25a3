"""Histories are trimmed only when an event adds to them: stale entries must change nothing.

Random event sequences run through two states, one as detection keeps it and one trimmed of
everything aged out after every event (as if each window were applied eagerly); the signals
raised and the profile must be the same at every step.
"""

import random

import pytest

from services.monitoring.detection import keep_for, new_account, process
from services.monitoring.profile import (
    DAY,
    KEEP_DAYS,
    AccountState,
    Event,
    EventKind,
    Keep,
    Timing,
    features,
)
from services.monitoring.rules import load_rules

RULES = load_rules()
T0 = 1_767_600_000.0
STEPS = (0, 60, 3600, DAY, 5 * DAY, 40 * DAY, 200 * DAY, -3 * DAY)
AMOUNTS = (1_000, 5_000, 10_000, 50_000, 200_000, 1_000_000)


def trim_everything(state: AccountState, keep: Keep) -> None:
    """Every history cut to its windows at the state's latest event time."""
    now = state.last_event_at
    year_ago = now - KEEP_DAYS * DAY

    def points(series: list, cutoff: float) -> None:
        old = sum(1 for point in series if point[0] <= cutoff)
        del series[: max(0, old - 1)]

    points(state.dpd_points, year_ago)
    points(state.incomes, now - max(KEEP_DAYS, keep.income_days) * DAY)
    state.dpd_entries[:] = [e for e in state.dpd_entries if e[0] > year_ago]
    state.partials[:] = [t for t in state.partials if t > now - 180 * DAY]
    state.inquiries[:] = [t for t in state.inquiries if t > now - max(30, keep.inquiry_days) * DAY]
    cutoff = now - keep.utilisation_days * DAY
    state.utilisation_points[:] = [p for p in state.utilisation_points if p[0] > cutoff]
    state.draws[:] = [t for t in state.draws if t > now - keep.draw_hours * 3600]


def random_event(rng: random.Random, sequence: int, at: float, dpd: int) -> Event:
    kind = EventKind.account_opened if sequence == 1 else rng.choice(list(EventKind)[1:])
    fields: dict = {}
    if kind in (
        EventKind.account_opened,
        EventKind.line_drawn,
        EventKind.repayment,
        EventKind.transaction,
        EventKind.credit_line_changed,
    ):
        fields["amount"] = rng.choice(AMOUNTS)
    if kind is EventKind.account_opened:
        fields["income"] = rng.choice((0, 1_000_000, 2_000_000))
    if kind is EventKind.income_updated:
        fields["income"] = rng.choice((500_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000))
    if kind is EventKind.repayment:
        fields["timing"] = rng.choice(list(Timing))
        if rng.random() < 0.5:
            fields["days_past_due"] = rng.choice((0, 0, 1, 10))
    if kind in (EventKind.days_past_due_updated, EventKind.payment_missed):
        fields["days_past_due"] = rng.choice((0, 1, 15, 30, 31, 60, 61, 90, 120, dpd + 1))
    return Event(f"e{sequence}", "acct", sequence, at, kind, **fields)


@pytest.mark.parametrize("seed", range(40))
def test_lazily_trimmed_histories_raise_and_profile_as_eagerly_trimmed_ones(seed):
    rng = random.Random(seed)
    keep = keep_for(RULES)
    lazy = eager = None
    at, dpd = T0, 0
    for sequence in range(1, 300):
        at += rng.choice(STEPS)
        event = random_event(rng, sequence, at, dpd)
        dpd = event.days_past_due if event.days_past_due is not None else dpd
        if lazy is None:
            lazy, eager = new_account(event), new_account(event)
        raised = [(r.signal_id, r.evidence) for r in process(lazy, event, RULES)]
        assert raised == [(r.signal_id, r.evidence) for r in process(eager, event, RULES)]
        trim_everything(eager, keep)
        assert features(lazy) == features(eager)
        if rng.random() < 0.05:
            lazy = AccountState.from_json(lazy.to_json())

"""One batch of events in one transaction: de-duplicated, put in order per account, folded into
the profiles, and the signals it raises stored as alerts (and as the outbox for limits).

The caller commits; nothing of a batch is acknowledged before that commit, and nothing of it
is applied at all when it holds an event for an account monitoring has never seen opened.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property

from services.common.errors import Violations
from services.monitoring.detection import Raised, new_account, process
from services.monitoring.profile import AccountState, Event, EventKind, features, moved_materially
from services.monitoring.rules import Rules
from services.monitoring.store import UnitOfWork


class Outcome(StrEnum):
    applied = "applied"
    duplicate = "duplicate"
    out_of_sequence = "out_of_sequence"


@dataclass(frozen=True, slots=True)
class EventResult:
    event_id: str
    outcome: Outcome
    expected_sequence: int = 0


@dataclass
class BatchResult:
    results: list[EventResult]  # in the order of the batch
    raised: list[Raised] = field(default_factory=list)
    last_alert: int = 0  # number of the last alert stored (0: none)
    rescore_due: bool = False

    def count(self, outcome: Outcome) -> int:
        return self._counts[outcome]

    @cached_property
    def _counts(self) -> Counter[Outcome]:
        return Counter(r.outcome for r in self.results)


def ingest(uow: UnitOfWork, batch: Sequence[Event], rules: Rules, now: datetime) -> BatchResult:
    """Applies `batch` inside `uow`'s transaction; the caller commits, then acknowledges."""
    seen = uow.seen_event_ids(e.event_id for e in batch)
    states = uow.account_states({e.account_id for e in batch if e.event_id not in seen}, lock=True)
    stored = set(states)
    results: list[EventResult | None] = [None] * len(batch)
    unknown = Violations()
    touched: dict[str, AccountState] = {}
    applied: list[Event] = []
    raised: list[Raised] = []
    # Per account in sequence order, whatever order the producer sent them in.
    for i in sorted(range(len(batch)), key=lambda i: (batch[i].account_id, batch[i].sequence)):
        event = batch[i]
        if event.event_id in seen:
            results[i] = EventResult(event.event_id, Outcome.duplicate)
            continue
        state = states.get(event.account_id)
        if state is None and event.kind is not EventKind.account_opened:
            unknown.add(
                f"batch.events[{i}].account_id",
                "unknown account: an account's first event must be account_opened",
            )
            continue
        expected = state.last_sequence + 1 if state else 1
        if event.sequence != expected:
            results[i] = EventResult(event.event_id, Outcome.out_of_sequence, expected)
            continue
        if state is None:
            state = states[event.account_id] = new_account(event)
        seen.add(event.event_id)
        raised.extend(process(state, event, rules))
        touched[event.account_id] = state
        applied.append(event)
        results[i] = EventResult(event.event_id, Outcome.applied)
    unknown.raise_if_any()

    rescore_due = False
    profiles = {}
    for account_id, state in touched.items():
        profiles[account_id] = profile = features(state)
        if moved_materially(profile, state.scored_profile, rules.rescoring.numeric_change):
            state.rescore_due = rescore_due = True
    for signal in raised:
        signal.profile = profiles[signal.account_id]
    uow.save_events(applied, now)
    uow.save_states(touched.values(), stored, now)
    last_alert = uow.add_alerts(raised, rules.version, now)
    return BatchResult([r for r in results if r is not None], raised, last_alert, rescore_due)

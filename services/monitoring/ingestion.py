"""One batch of events in one transaction: de-duplicated, put in order per account, folded into
the profiles, and the signals it raises stored as alerts (and as the outbox for limits).

The caller commits; nothing of a batch is acknowledged before that commit. A batch holding an
event for an account monitoring has never seen opened is refused whole, unless the caller asks
for such events to be set aside (the JetStream consumer, which dead-letters them alone).
`Ingestor` is the one path every transport takes: apply, commit, then count and notify.
"""

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property

from services.common.errors import Violations
from services.monitoring import metrics
from services.monitoring.detection import Raised, new_account, process
from services.monitoring.profile import AccountState, Event, EventKind, features, moved_materially
from services.monitoring.rules import Rules, RulesHolder
from services.monitoring.store import MonitoringStore, UnitOfWork


class Outcome(StrEnum):
    applied = "applied"
    duplicate = "duplicate"
    out_of_sequence = "out_of_sequence"
    # Only when set aside (see `ingest`): an event of an account never opened.
    unknown_account = "unknown_account"


@dataclass(frozen=True, slots=True)
class EventResult:
    event_id: str
    outcome: Outcome
    expected_sequence: int = 0


@dataclass
class BatchResult:
    results: list[EventResult]  # in the order of the batch
    raised: list[Raised] = field(default_factory=list)
    last_alert: int = 0  # the alerts' head once they are numbered (0: none raised)
    rescore_due: bool = False

    def count(self, outcome: Outcome) -> int:
        return self._counts[outcome]

    @cached_property
    def _counts(self) -> Counter[Outcome]:
        return Counter(r.outcome for r in self.results)


def ingest(
    uow: UnitOfWork,
    batch: Sequence[Event],
    rules: Rules,
    now: datetime,
    *,
    set_aside_unknown_accounts: bool = False,
) -> BatchResult:
    """Applies `batch` inside `uow`'s transaction; the caller commits, then acknowledges.

    An event of an account never opened refuses the whole batch (InvalidArgument), or, with
    `set_aside_unknown_accounts`, gets the outcome `unknown_account` while the rest apply; the
    results then hold one entry per event of the batch, in its order."""
    seen = uow.seen_events((e.account_id, e.event_id) for e in batch)
    states = uow.account_states(
        {e.account_id for e in batch if (e.account_id, e.event_id) not in seen}, lock=True
    )
    stored = set(states)
    results: list[EventResult | None] = [None] * len(batch)
    unknown = Violations()
    touched: dict[str, AccountState] = {}
    applied: list[Event] = []
    raised: list[Raised] = []
    # Per account in sequence order, whatever order the producer sent them in.
    for i in sorted(range(len(batch)), key=lambda i: (batch[i].account_id, batch[i].sequence)):
        event = batch[i]
        if (event.account_id, event.event_id) in seen:
            results[i] = EventResult(event.event_id, Outcome.duplicate)
            continue
        state = states.get(event.account_id)
        if state is None and event.kind is not EventKind.account_opened:
            if set_aside_unknown_accounts:
                results[i] = EventResult(event.event_id, Outcome.unknown_account)
                continue
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
        seen.add((event.account_id, event.event_id))
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
    uow.add_alerts(raised, rules.version, now)
    return BatchResult([r for r in results if r is not None], raised, rescore_due=rescore_due)


class Ingestor:
    """Applies batches of checked events, each in one transaction, and after its commit counts
    them and tells those waiting on it: watchers of new alerts, signal delivery, rescoring.
    The gRPC calls and the JetStream consumer both apply events through it."""

    def __init__(
        self,
        store: Callable[[], MonitoringStore],
        rules: RulesHolder,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store  # a callable: the store is attached once migrated
        self.rules = rules
        self.clock = clock
        self.on_alerts: Callable[[int], None] = lambda _last_alert: None
        self.on_signals: Callable[[], None] = lambda: None
        self.on_rescore_due: Callable[[], None] = lambda: None

    def apply(
        self, events: Sequence[Event], *, set_aside_unknown_accounts: bool = False
    ) -> BatchResult:
        """Applies `events` durably (see `ingest`); returns once they are committed."""
        rules = self.rules.rules
        store = self._store()
        with metrics.BATCH_SECONDS.time():
            with store.unit_of_work() as uow:
                result = ingest(
                    uow,
                    events,
                    rules,
                    self.clock(),
                    set_aside_unknown_accounts=set_aside_unknown_accounts,
                )
            if result.raised:  # numbered before the call returns: readers then see them
                result.last_alert = store.number_alerts()
        metrics.observe_event_lag(events, result.results, time.time())
        for outcome in Outcome:
            if count := result.count(outcome):
                metrics.EVENTS_INGESTED.labels(outcome.value).inc(count)
        metrics.count_signals(result.raised)
        if result.last_alert:
            self.on_alerts(result.last_alert)
            if any(r.report for r in result.raised):
                self.on_signals()
        if result.rescore_due:
            self.on_rescore_due()
        return result

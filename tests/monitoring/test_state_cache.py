"""The account states a process caches: only ever served at the version stored, whoever wrote
it (another replica, the rescorer), and never a change that was rolled back."""

from datetime import UTC, datetime

import pytest

from services.monitoring.ingestion import Outcome, ingest
from services.monitoring.profile import AccountState, Event, EventKind, Timing
from services.monitoring.rules import load_rules
from services.monitoring.store import MonitoringStore, StateCache
from tests.monitoring.events import Customer, publish

RULES = load_rules()
NOW = datetime(2026, 11, 22, tzinfo=UTC)
T0 = 1_767_600_000.0


def event(sequence: int, account: str = "acct") -> Event:
    at = T0 + sequence * 3600
    if sequence == 1:
        return Event(f"{account}-e1", account, 1, at, EventKind.account_opened, amount=500_000)
    return Event(
        f"{account}-e{sequence}", account, sequence, at, EventKind.repayment, 1_000, None,
        Timing.on_time,
    )  # fmt: skip


def apply(store: MonitoringStore, *batch: Event) -> list[Outcome]:
    with store.unit_of_work() as uow:
        result = ingest(uow, batch, RULES, NOW)
    return [r.outcome for r in result.results]


def stored(store: MonitoringStore, account: str = "acct") -> AccountState:
    with store.read() as uow:
        state = uow.account_state(account)
    assert state is not None
    return state


@pytest.fixture
def replicas(database_url):
    first, second = MonitoringStore.open(database_url), MonitoringStore.open(database_url)
    yield first, second
    first.close()
    second.close()


def test_a_replica_sees_what_another_wrote_since_it_cached_the_state(replicas):
    first, second = replicas
    assert apply(first, event(1), event(2)) == [Outcome.applied] * 2
    assert len(first.states) == 1
    assert apply(second, event(3)) == [Outcome.applied]
    # The first replica's cached state is at sequence 2: it must not be served.
    assert apply(first, event(4)) == [Outcome.applied]
    assert stored(first).last_sequence == 4
    assert stored(first).on_time_streak == 3
    assert apply(second, event(5)) == [Outcome.applied]


def test_a_state_written_by_the_rescorer_is_read_again(replicas):
    first, second = replicas
    apply(first, event(1), event(2))
    with second.unit_of_work() as uow:
        states = uow.account_states(["acct"], lock=True)
        states["acct"].score = {"risk_band": "C"}
        uow.save_states(states.values(), set(states), NOW)
    with first.unit_of_work() as uow:
        assert uow.account_states(["acct"], lock=True)["acct"].score == {"risk_band": "C"}


def test_a_rolled_back_batch_leaves_nothing_in_the_cache(database_url):
    store = MonitoringStore.open(database_url)
    try:
        apply(store, event(1), event(2))
        with pytest.raises(RuntimeError), store.unit_of_work() as uow:
            ingest(uow, [event(3)], RULES, NOW)
            raise RuntimeError("the commit never happens")
        assert len(store.states) == 0
        assert apply(store, event(3)) == [Outcome.applied]
        with store.unit_of_work() as uow:
            cached = uow.account_states(["acct"], lock=True)["acct"]
        assert cached == stored(store)
        assert cached.last_sequence == 3 and cached.on_time_streak == 2
    finally:
        store.close()


def test_the_cache_keeps_at_most_its_capacity_newest_first():
    cache = StateCache(2)
    states = {name: AccountState(account_id=name, opened_at=T0) for name in "abc"}
    cache.put([(name, 1, state) for name, state in states.items()])
    assert len(cache) == 2
    assert cache.take("a", 1) is None
    assert cache.take("b", 2) is None  # another version: gone
    assert cache.take("c", 1) is states["c"]
    assert len(cache) == 0
    cache.put([("c", 3, states["c"])])
    cache.put([("c", 2, AccountState(account_id="c", opened_at=T0))])  # put back late
    assert cache.take("c", 3) is states["c"]


def test_a_server_keeps_as_many_states_as_its_setting_allows(start_monitoring):
    """CREDITLINE_MONITORING_CACHED_STATES bounds the cache of a serving process: each state
    takes memory (about 10 KB for a busy account), and a pod has a memory limit."""
    monitoring = start_monitoring(cached_states=2)
    for number in range(12):
        customer = Customer(f"cached-{number}")
        publish(monitoring, customer.opened(), customer.advance(days=1).drawn(100))
    (binding,) = monitoring.server.bindings
    # At most: the rescorer takes a state out while it works on its account.
    assert len(binding.servicer.store.states) <= 2


def test_the_rescoring_flag_is_stored_whenever_it_changes(database_url):
    store = MonitoringStore.open(database_url)

    def due() -> list[str]:
        with store.read() as uow:
            return uow.accounts_due_for_rescoring(10)

    try:
        apply(store, event(1, "a"), event(1, "b"))
        assert due() == ["a", "b"]
        with store.unit_of_work() as uow:
            states = uow.account_states(["a", "b"], lock=True)
            states["a"].rescore_due = False
            uow.save_states(states.values(), set(states), NOW)
        assert due() == ["b"]
        apply(store, event(2, "a"), event(2, "b"))  # a first repayment: a count feature moves
        assert due() == ["a", "b"]
    finally:
        store.close()

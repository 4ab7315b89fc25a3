"""Monitoring's store on SQLite and PostgreSQL: the migrated schema is the store's, alerts are
numbered without gaps under concurrent batches, and one replica at a time holds a lease."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.common.database import create_engine, migrate
from services.common.errors import Aborted, Violations
from services.monitoring.converters import events_of
from services.monitoring.detection import new_account
from services.monitoring.ingestion import ingest
from services.monitoring.retention import EventRetention
from services.monitoring.rules import load_rules
from services.monitoring.store import MIGRATIONS, AlertQuery, MonitoringStore, metadata
from tests.monitoring.events import Customer, batch

VERSION_TABLE = "monitoring_alembic_version"


def test_migrating_twice_leaves_exactly_the_stores_schema(database_url):
    engine = create_engine(database_url)
    try:
        migrate(engine, MIGRATIONS)
        migrate(engine, MIGRATIONS)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_concurrent_batches_number_their_alerts_without_gaps(database_url):
    store = MonitoringStore.open(database_url)
    rules = load_rules()
    start = threading.Barrier(4)

    def producer(worker: int) -> None:
        customers = [Customer(f"acct-{worker}-{i}") for i in range(5)]
        opened = events_of(batch(*(c.opened() for c in customers)), "CNY", Violations())
        start.wait()
        _apply(store, opened, rules)
        for _ in range(5):
            late = [c.advance(days=31).missed() for c in customers]
            _apply(store, events_of(batch(*late), "CNY", Violations()), rules)
            cured = [c.advance(days=1).repaid(10, "LATE") for c in customers]
            _apply(store, events_of(batch(*cured), "CNY", Violations()), rules)

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(producer, w) for w in range(4)]:
                future.result()
        with store.read() as uow:
            numbers = [a.seq for a in uow.alerts_after(0, AlertQuery(), 10_000)]
            assert uow.last_alert_number() == len(numbers)
        assert numbers == list(range(1, 4 * 5 * 5 * 2 + 1))  # each miss, each cure
    finally:
        store.close()


def test_rows_a_concurrent_batch_wrote_first_refuse_the_batch_as_aborted(database_url):
    """New rows are copied in on PostgreSQL: a key written first by another batch still
    comes out as ABORTED (retry), and the connection serves the next batch."""
    store = MonitoringStore.open(database_url)
    rules = load_rules()
    now = datetime(2026, 11, 22, tzinfo=UTC)
    customer = Customer("acct-opened-twice")
    opened = events_of(batch(customer.opened()), "CNY", Violations())
    try:
        with store.unit_of_work() as uow:
            ingest(uow, opened, rules, now)
        # What a batch that read before the first committed would write.
        with pytest.raises(Aborted), store.unit_of_work() as uow:
            uow.save_events(opened, now)
        with pytest.raises(Aborted), store.unit_of_work() as uow:
            uow.save_states([new_account(opened[0])], set(), now)
        with store.unit_of_work() as uow:
            result = ingest(
                uow, events_of(batch(customer.inquiry()), "CNY", Violations()), rules, now
            )
        assert [r.outcome.value for r in result.results] == ["applied"]
    finally:
        store.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # row locks
def test_a_release_of_rescoring_claims_and_a_batch_lock_accounts_in_one_order(database_url):
    """Releasing claims locks the accounts in key order, as a batch does: the two never each
    hold a row the other waits for (released in the table's order, one was refused as a
    deadlock)."""
    store = MonitoringStore.open(database_url)
    rules = load_rules()
    now = datetime(2026, 11, 22, tzinfo=UTC)
    ids = ["acct-lock-a", "acct-lock-z"]
    for account_id in reversed(ids):  # z stored first: a scan of the table meets it first
        opened = events_of(batch(Customer(account_id).opened()), "CNY", Violations())
        with store.unit_of_work() as uow:
            ingest(uow, opened, rules, now)
    batch_holds_a = threading.Event()
    failures: list[Exception] = []

    def release() -> None:
        batch_holds_a.wait(10)
        try:
            with store.unit_of_work() as uow:
                uow.release_rescoring(ids)
        except Exception as error:  # noqa: BLE001 - what the test looks at
            failures.append(error)

    releasing = threading.Thread(target=release)
    releasing.start()
    try:
        with store.unit_of_work() as uow:  # a batch of both accounts
            uow.account_states(ids[:1], lock=True)
            batch_holds_a.set()
            time.sleep(0.5)  # the release is waiting for a by now
            uow.account_states(ids[1:], lock=True)
        releasing.join(30)
        assert failures == []
    finally:
        releasing.join(30)
        store.close()


def test_one_owner_holds_a_lease_until_it_expires(database_url):
    store = MonitoringStore.open(database_url)
    now = datetime(2026, 11, 22, tzinfo=UTC)
    try:
        with store.unit_of_work() as uow:
            assert uow.take_lease("delivery", "replica-a", now, 15)
        with store.unit_of_work() as uow:
            assert not uow.take_lease("delivery", "replica-b", now + timedelta(seconds=5), 15)
        with store.unit_of_work() as uow:
            assert uow.take_lease("delivery", "replica-a", now + timedelta(seconds=10), 15)
        with store.unit_of_work() as uow:  # replica-a stopped renewing
            assert uow.take_lease("delivery", "replica-b", now + timedelta(seconds=26), 15)
        with store.unit_of_work() as uow:  # replica-b stops and lets go at once
            uow.release_lease("delivery", "replica-a")  # not its lease: nothing happens
            assert not uow.take_lease("delivery", "replica-c", now + timedelta(seconds=27), 15)
            uow.release_lease("delivery", "replica-b")
            assert uow.take_lease("delivery", "replica-c", now + timedelta(seconds=27), 15)
    finally:
        store.close()


def _apply(store, events, rules) -> None:
    while True:
        try:
            with store.unit_of_work() as uow:
                raised = ingest(uow, events, rules, datetime.now(UTC)).raised
            if raised:  # as the Ingestor does after the commit
                store.number_alerts()
            return
        except Aborted:  # lost to a concurrent transaction: retried, as a client would
            continue


def test_forgotten_event_ids_are_still_never_applied_twice(database_url):
    store = MonitoringStore.open(database_url)
    rules = load_rules()
    long_ago = datetime(2026, 1, 1, tzinfo=UTC)
    customer = Customer("acct-retention")
    sent = events_of(batch(customer.opened(), customer.inquiry()), "CNY", Violations())
    try:
        with store.unit_of_work() as uow:
            ingest(uow, sent, rules, long_ago)
        with store.unit_of_work() as uow:
            assert uow.forget_events_before(long_ago + timedelta(days=1), 1) == 1
            assert uow.forget_events_before(long_ago + timedelta(days=1), 10) == 1
            assert uow.forget_events_before(long_ago + timedelta(days=1), 10) == 0
        with store.unit_of_work() as uow:
            replayed = ingest(uow, sent, rules, datetime.now(UTC))
        assert [r.outcome.value for r in replayed.results] == ["out_of_sequence"] * 2
        with store.read() as uow:
            state = uow.account_state("acct-retention")
        assert (state.last_sequence, len(state.inquiries)) == (2, 1)
    finally:
        store.close()


def test_the_retention_worker_forgets_only_what_is_older_than_its_days(database_url):
    store = MonitoringStore.open(database_url)
    rules = load_rules()
    now = datetime(2026, 11, 22, tzinfo=UTC)
    old, recent = Customer("acct-old").opened(), Customer("acct-recent").opened()
    try:
        for event, ingested in ((old, now - timedelta(days=100)), (recent, now)):
            with store.unit_of_work() as uow:
                ingest(uow, events_of(batch(event), "CNY", Violations()), rules, ingested)
        assert EventRetention(store, days=90, clock=lambda: now).run_once() is False
        with store.read() as uow:
            keys = [("acct-old", old.event_id), ("acct-recent", recent.event_id)]
            assert uow.seen_events(keys) == {("acct-recent", recent.event_id)}
            assert uow.account_state("acct-old") is not None  # profiles are kept
    finally:
        store.close()

"""Monitoring's schema upgrades carry the data: a database at 0001 with rows, upgraded to the
newest revision, reads back the same accounts, events and alerts, and numbers on from them."""

from datetime import UTC, datetime

from services.common.database import create_engine, migrate
from services.common.errors import Violations
from services.monitoring.converters import events_of
from services.monitoring.ingestion import ingest
from services.monitoring.rules import load_rules
from services.monitoring.store import MIGRATIONS, AlertQuery, MonitoringStore
from tests.monitoring.events import Customer, batch
from tests.monitoring.test_state_format import POSITIONAL_ROWS

MICROS = 1_795_000_000_000_000


def test_rows_stored_at_0001_read_back_after_the_upgrade(database_url):
    engine = create_engine(database_url)
    migrate(engine, MIGRATIONS, revision="0001")
    row = POSITIONAL_ROWS[0]
    account_id = row["account_id"]
    with engine.begin() as connection:
        execute = connection.exec_driver_sql
        bind = "%s" if database_url.startswith("postgresql") else "?"
        execute(
            "INSERT INTO monitoring_accounts (account_id, last_sequence, profile_version, "
            f"rescore_due, version, state, updated_at) VALUES ({', '.join([bind] * 7)})",
            (account_id, row["last_sequence"], row["profile_version"], False, 3, row["state"], 0),
        )
        execute(
            "INSERT INTO monitoring_events (event_id, account_id, sequence, kind, occurred_at, "
            f"ingested_at) VALUES ({', '.join([bind] * 6)})",
            [(f"ev-{n}", account_id, n, "repayment", MICROS, MICROS) for n in (1, 2)],
        )
        execute(
            "INSERT INTO monitoring_alerts (seq, signal_id, account_id, type, severity, evidence, "
            "profile, risk_band, event_id, detected_at, created_at, rules_version, delivery, "
            f"delivery_attempts, delivery_error) VALUES ({', '.join([bind] * 15)})",
            [
                (
                    n,
                    f"sig-{n}",
                    account_id,
                    "days_past_due_1",
                    1,
                    "{}",
                    "{}",
                    "",
                    f"ev-{n}",
                    MICROS,
                    MICROS,
                    "v1",
                    "pending",
                    0,
                    "",
                )
                for n in (1, 2)
            ],
        )
        execute("UPDATE monitoring_counters SET value = 2 WHERE name = 'alerts'")
    engine.dispose()

    store = MonitoringStore.open(database_url)  # upgrades to the newest revision
    try:
        with store.read() as uow:
            state = uow.account_state(account_id)
            assert state is not None and state.last_sequence == row["last_sequence"]
            assert uow.seen_events([(account_id, "ev-1"), (account_id, "ev-3")]) == {
                (account_id, "ev-1")
            }
            assert [(a.seq, a.signal_id) for a in uow.alerts_after(0, AlertQuery(), 10)] == [
                (1, "sig-1"),
                (2, "sig-2"),
            ]
            assert [a.seq for a in uow.pending_signals(10)] == [1, 2]
            assert uow.last_alert_number() == 2
        # New alerts number on from the old ones.
        customer = Customer("acct-after-upgrade")
        sent = batch(customer.opened(), customer.advance(days=31).missed(days=1))
        with store.unit_of_work() as uow:
            raised = ingest(
                uow, events_of(sent, "CNY", Violations()), load_rules(), datetime.now(UTC)
            )
        assert raised.raised
        assert store.number_alerts() == 2 + len(raised.raised)
        with store.read() as uow:
            numbers = [a.seq for a in uow.alerts_after(0, AlertQuery(), 10)]
        assert numbers == list(range(1, 3 + len(raised.raised)))
    finally:
        store.close()

"""Times in the store's hot tables are integer microseconds: datetimes again at its boundary."""

from datetime import UTC, datetime

from services.monitoring.detection import Raised
from services.monitoring.profile import Event, EventKind
from services.monitoring.rules import Severity
from services.monitoring.store import MonitoringStore


def test_alert_times_come_back_as_the_utc_datetimes_stored(database_url):
    store = MonitoringStore.open(database_url)
    now = datetime(2026, 11, 22, 10, 30, 15, 123456, tzinfo=UTC)
    detected = 1_767_600_000.654321
    raised = Raised("sig_1", "acct", "days_past_due_1", Severity.low, detected, "e1", {})
    try:
        with store.unit_of_work() as uow:
            event = Event("e1", "acct", 1, detected, EventKind.account_opened)
            uow.save_events([event], now)
            uow.add_alerts([raised], "v1", now)
        assert store.number_alerts() == 1
        with store.read() as uow:
            (alert,) = uow.alerts_by_signal_id("acct", ["sig_1"])
            assert uow.seen_events([("acct", "e1"), ("acct", "e2")]) == {("acct", "e1")}
        assert alert.created_at == now
        assert alert.detected_at == datetime.fromtimestamp(detected, UTC)
        assert alert.detected_at.tzinfo is UTC
        with store.unit_of_work() as uow:
            uow.mark_delivered([alert.seq], now)
        with store.read() as uow:
            assert uow.pending_signals(10) == []
    finally:
        store.close()

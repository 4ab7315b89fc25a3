"""Forgets the ids of old events, so the table that de-duplicates them does not grow forever.

Ids are kept for `event_retention_days`: a producer's retries and replays within that window
are recognised as duplicates by id. Past it they are still never applied twice, because an
account applies only the next sequence (see `MonitoringStore.forget_events_before`).
"""

from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from services.common.workers import BackgroundWorker
from services.monitoring.store import MonitoringStore

log = structlog.get_logger("creditline.monitoring.retention")

# Ids deleted per transaction: short transactions, so ingestion is never held up for long.
CHUNK = 5_000


class EventRetention(BackgroundWorker):
    def __init__(self, store: MonitoringStore, days: float, clock: Callable[[], datetime]) -> None:
        super().__init__("retention", idle_seconds=60.0)
        self.store = store
        self.days = days
        self.clock = clock

    def run_once(self) -> bool:
        """Forgets one chunk; returns whether there may be more."""
        cutoff = self.clock() - timedelta(days=self.days)
        with self.store.unit_of_work() as uow:
            forgotten = uow.forget_events_before(cutoff, CHUNK)
        if forgotten:
            log.info("retention.forgotten", events=forgotten)
        return forgotten == CHUNK

"""Applied events: their ids, to recognise a duplicate, kept for the retention window."""

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, String, Table, select

from services.monitoring.profile import Event
from services.monitoring.store.sql import EpochMicros, Room, epoch_micros, metadata, micros

events = Table(
    "monitoring_events",
    metadata,
    Column("event_id", String, primary_key=True),
    Column("account_id", String, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("kind", String, nullable=False),
    Column("occurred_at", EpochMicros, nullable=False),
    Column("ingested_at", EpochMicros, nullable=False),
    # Deliberately no index by account: nothing reads events that way (an account's sequence is
    # in its state), and every batch would otherwise touch a random index page per event. The
    # index by ingestion time only ever grows at its end; retention deletes from its start.
    Index("ix_monitoring_events_ingested_at", "ingested_at"),
)


class Events(Room):
    def seen_event_ids(self, event_ids: Iterable[str]) -> set[str]:
        rows = self._select_in(events, "event_id", "event_id", event_ids, lock=False)
        return {event_id for (event_id,) in rows}

    def save_events(self, applied: Sequence[Event], now: datetime) -> None:
        at = micros(now)
        rows = [
            (e.event_id, e.account_id, e.sequence, e.kind.value, epoch_micros(e.at), at)
            for e in applied
        ]
        self._insert(events, rows)

    def forget_events_before(self, cutoff: datetime, limit: int) -> int:
        """Deletes up to `limit` of the ids of events ingested before `cutoff`; returns how many.

        A forgotten event sent again is still never applied twice: its sequence is at or below
        its account's last, so it is refused as out of sequence.
        """
        oldest = (
            select(events.c.event_id)
            .where(events.c.ingested_at < cutoff)
            .order_by(events.c.ingested_at)
            .limit(limit)
        )
        deleted = self._connection.execute(
            events.delete().where(events.c.event_id.in_(oldest.scalar_subquery()))
        )
        return deleted.rowcount

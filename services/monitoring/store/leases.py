"""Leases: a named job held by one replica at a time until it lets go or stops renewing."""

from datetime import datetime, timedelta

from sqlalchemy import Column, String, Table, insert, select, update

from services.common.database import UtcDateTime
from services.monitoring.store.sql import Room, metadata

leases = Table(
    "monitoring_leases",
    metadata,
    Column("name", String, primary_key=True),
    Column("owner", String, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)


class Leases(Room):
    def release_lease(self, name: str, owner: str) -> None:
        """Gives up the named lease if `owner` holds it."""
        self._connection.execute(
            leases.delete().where(leases.c.name == name, leases.c.owner == owner)
        )

    def take_lease(self, name: str, owner: str, now: datetime, seconds: float) -> bool:
        """Takes or renews the named lease for `owner` unless another owner holds it."""
        expires = now + timedelta(seconds=seconds)
        query = select(leases.c.owner, leases.c.expires_at).where(leases.c.name == name)
        if self._postgres:
            query = query.with_for_update()
        row = self._connection.execute(query).first()
        if row is None:
            self._connection.execute(
                insert(leases).values(name=name, owner=owner, expires_at=expires)
            )
            return True
        if row.owner != owner and row.expires_at > now:
            return False
        self._connection.execute(
            update(leases).where(leases.c.name == name).values(owner=owner, expires_at=expires)
        )
        return True

"""Alembic environment of the monitoring schema (see services.common.database.migrate)."""

from services.common.database import run_migrations

run_migrations("monitoring")

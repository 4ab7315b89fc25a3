"""Alembic revisions of the limits schema, applied at start by services.common.database.migrate."""

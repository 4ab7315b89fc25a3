"""Alembic environment of the limits schema: runs on the connection `migrate` passes in."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the limits migrations with services.common.database.migrate")

context.configure(
    connection=connection,
    # A table of its own, so that services sharing one database keep separate histories.
    version_table="limits_alembic_version",
    # SQLite alters tables only by copying them; future revisions need batch operations.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()

"""Partition-ready keys and sharded review runs.

The account id leads the key of every per-account hot table, so each can be partitioned (or
distributed with Citus) by account: limit events by (account_id, event_id), signals by
(account_id, signal_id), and the decisions that refer to an event (appeals, signals, notices)
by (account_id, event_id). Idempotency records are keyed by (scope, request_id): the scope is
the account a request names, or the customer (OpenAccount), appeal (ResolveAppeal) or notice
(AcknowledgeNotice); records stored before this revision keep the scope '' and are still
found by their request id.

A review run is split into shards by a stable hash of the account id (`review_bucket`, one of
REVIEW_BUCKETS, stored on the account), each with its own cursor, counts and lease. A run in
progress is carried as one shard over every bucket: its cursor starts again (the cursor's
order changed), so a real run's reviewed accounts, no longer due, are not reviewed twice, and
an unfinished dry run counts afresh.

Revision ID: 0007
Revises: 0006 (re-chained after 0007 when the branches merge)
Create Date: 2026-12-08
"""

import warnings
import zlib

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)
# Frozen here as the store defines them (services.limits.store; a test checks they agree).
REVIEW_BUCKETS = 1024
BACKFILL_BATCH = 10_000

EVENT_REFERENCES = ("appeals", "signals", "notices")


def review_bucket(account_id: str) -> int:
    return zlib.crc32(account_id.encode()) % REVIEW_BUCKETS


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in EVENT_REFERENCES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_event_id", type_="foreignkey")
    _replace_primary_key("limit_events", ["account_id", "event_id"], postgresql)
    _replace_primary_key("signals", ["account_id", "signal_id"], postgresql)
    for table in EVENT_REFERENCES:
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(
                f"fk_{table}_event_id",
                "limit_events",
                ["account_id", "event_id"],
                ["account_id", "event_id"],
            )

    with op.batch_alter_table("idempotency_records") as batch:
        batch.add_column(sa.Column("scope", sa.String(), nullable=False, server_default=""))
    with op.batch_alter_table("idempotency_records") as batch:
        batch.alter_column("scope", server_default=None)
    _replace_primary_key("idempotency_records", ["scope", "request_id"], postgresql)

    _add_review_buckets()
    _shard_review_runs()


def _replace_primary_key(table: str, columns: list[str], postgresql: bool) -> None:
    # SQLAlchemy warns that the copy's key differs from the old one's, which is the point.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Table '_alembic_tmp_", sa.exc.SAWarning)
        with op.batch_alter_table(table) as batch:
            if postgresql:  # SQLite copies the table with the new key instead
                batch.drop_constraint(f"{table}_pkey", type_="primary")
            batch.create_primary_key(f"{table}_pkey", columns)


def _add_review_buckets() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("review_bucket", sa.Integer(), nullable=True))
    accounts = sa.table(
        "accounts", sa.column("account_id", sa.String()), sa.column("review_bucket", sa.Integer())
    )
    connection = op.get_bind()
    after = ""
    while True:
        ids = list(
            connection.execute(
                sa.select(accounts.c.account_id)
                .where(accounts.c.account_id > after)
                .order_by(accounts.c.account_id)
                .limit(BACKFILL_BATCH)
            ).scalars()
        )
        if not ids:
            break
        connection.execute(
            accounts.update()
            .where(accounts.c.account_id == sa.bindparam("id"))
            .values(review_bucket=sa.bindparam("bucket")),
            [{"id": i, "bucket": review_bucket(i)} for i in ids],
        )
        after = ids[-1]
    with op.batch_alter_table("accounts") as batch:
        batch.alter_column("review_bucket", existing_type=sa.Integer(), nullable=False)
    op.create_index(
        "ix_accounts_review_bucket_account_id", "accounts", ["review_bucket", "account_id"]
    )


def _shard_review_runs() -> None:
    op.create_table(
        "review_shards",
        sa.Column(
            "run_id",
            sa.String(),
            sa.ForeignKey("review_runs.run_id", name="fk_review_shards_run_id"),
            primary_key=True,
        ),
        sa.Column("shard", sa.Integer(), primary_key=True),
        sa.Column("first_bucket", sa.Integer(), nullable=False),
        sa.Column("end_bucket", sa.Integer(), nullable=False),
        sa.Column("last_bucket", sa.Integer(), nullable=False),
        sa.Column("last_account_id", sa.String(), nullable=False),
        sa.Column("counts", sa.Text(), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("worker_id", sa.String(), nullable=True),
        sa.Column("lease_until", Timestamp, nullable=True),
    )
    op.execute(
        f"""
        INSERT INTO review_shards (run_id, shard, first_bucket, end_bucket, last_bucket,
                                   last_account_id, counts, done)
        SELECT run_id, 0, 0, {REVIEW_BUCKETS}, -1, '',
               CASE WHEN dry_run AND NOT done THEN '{{}}' ELSE counts END, done
        FROM review_runs
        """
    )
    with op.batch_alter_table("review_runs") as batch:
        batch.add_column(sa.Column("shards", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("review_runs") as batch:
        batch.alter_column("shards", server_default=None)
        batch.drop_column("last_account_id")
        batch.drop_column("counts")


def downgrade() -> None:
    with op.batch_alter_table("review_runs") as batch:
        batch.add_column(
            sa.Column("last_account_id", sa.String(), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("counts", sa.Text(), nullable=False, server_default="{}"))
        batch.drop_column("shards")
    op.drop_table("review_shards")
    op.drop_index("ix_accounts_review_bucket_account_id", "accounts")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("review_bucket")
    postgresql = op.get_bind().dialect.name == "postgresql"
    _replace_primary_key("idempotency_records", ["request_id"], postgresql)
    with op.batch_alter_table("idempotency_records") as batch:
        batch.drop_column("scope")
    for table in EVENT_REFERENCES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_event_id", type_="foreignkey")
    _replace_primary_key("signals", ["signal_id"], postgresql)
    _replace_primary_key("limit_events", ["event_id"], postgresql)
    for table in EVENT_REFERENCES:
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(
                f"fk_{table}_event_id", "limit_events", ["event_id"], ["event_id"]
            )

"""The first monitoring schema: account profiles, applied events, alerts (also the outbox of
signals for limits), the alert counter and leases.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Timestamps are stored in UTC: timestamptz on PostgreSQL, ISO text on SQLite; those of the
# tables every batch writes as integer microseconds since the epoch (see the store).
Timestamp = sa.DateTime(timezone=True)
EpochMicros = sa.BigInteger()


def upgrade() -> None:
    op.create_table(
        "monitoring_accounts",
        sa.Column("account_id", sa.String(), primary_key=True),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("profile_version", sa.BigInteger(), nullable=False),
        sa.Column("rescore_due", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("updated_at", EpochMicros, nullable=False),
    )
    op.create_index(
        "ix_monitoring_accounts_rescore_due", "monitoring_accounts", ["rescore_due", "account_id"]
    )
    op.create_table(
        "monitoring_events",
        sa.Column("event_id", sa.String(), primary_key=True),
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("occurred_at", EpochMicros, nullable=False),
        sa.Column("ingested_at", EpochMicros, nullable=False),
    )
    op.create_index("ix_monitoring_events_ingested_at", "monitoring_events", ["ingested_at"])
    op.create_table(
        "monitoring_alerts",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("signal_id", sa.String(), nullable=False, unique=True),
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("severity", sa.Integer(), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("profile", sa.Text(), nullable=False),
        sa.Column("risk_band", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("detected_at", EpochMicros, nullable=False),
        sa.Column("created_at", EpochMicros, nullable=False),
        sa.Column("rules_version", sa.String(), nullable=False),
        sa.Column("delivery", sa.String(), nullable=False),
        sa.Column("delivery_attempts", sa.Integer(), nullable=False),
        sa.Column("delivery_error", sa.Text(), nullable=False),
        sa.Column("delivered_at", EpochMicros, nullable=True),
    )
    op.create_index(
        "ix_monitoring_alerts_account_id_seq", "monitoring_alerts", ["account_id", "seq"]
    )
    op.create_index("ix_monitoring_alerts_delivery_seq", "monitoring_alerts", ["delivery", "seq"])
    counters = op.create_table(
        "monitoring_counters",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(counters, [{"name": "alerts", "value": 0}])
    op.create_table(
        "monitoring_leases",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "monitoring_leases",
        "monitoring_counters",
        "monitoring_alerts",
        "monitoring_events",
        "monitoring_accounts",
    ):
        op.drop_table(table)

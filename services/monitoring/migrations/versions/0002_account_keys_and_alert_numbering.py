"""Partition-ready keys and alert numbering that replicas do not wait on: the account id leads
the keys of events (account_id, event_id) and alerts (account_id, signal_id); an alert gets
`id` (the order raised, from the sequence `monitoring_alert_ids` on PostgreSQL) and its number
`seq` once visible, possibly after its batch's commit; accounts get a rescoring claim.

Events and alerts are copied into tables of the new shape, which takes as long as the tables
are big: plan it like any table rewrite.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

EpochMicros = sa.BigInteger()
EVENT_COLUMNS = ("account_id", "event_id", "sequence", "kind", "occurred_at", "ingested_at")
ALERT_COLUMNS = (
    "account_id",
    "signal_id",
    "type",
    "severity",
    "evidence",
    "profile",
    "risk_band",
    "event_id",
    "detected_at",
    "created_at",
    "rules_version",
    "delivery",
    "delivery_attempts",
    "delivery_error",
    "delivered_at",
)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column(
        "monitoring_accounts",
        # Until when a replica's rescorer holds the account (microseconds since the epoch).
        sa.Column("rescore_claimed_until", sa.BigInteger(), nullable=True),
    )

    op.create_table(
        "monitoring_events_new",
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("occurred_at", EpochMicros, nullable=False),
        sa.Column("ingested_at", EpochMicros, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "event_id", name="monitoring_events_new_pkey"),
    )
    _copy("monitoring_events", EVENT_COLUMNS, EVENT_COLUMNS)
    _replace("monitoring_events", postgres)
    op.create_index("ix_monitoring_events_ingested_at", "monitoring_events", ["ingested_at"])

    op.create_table(
        "monitoring_alerts_new",
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("signal_id", sa.String(), nullable=False),
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
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
        sa.PrimaryKeyConstraint("account_id", "signal_id", name="monitoring_alerts_new_pkey"),
    )
    # Every alert of 0001 was numbered in its transaction: its id is its number.
    _copy("monitoring_alerts", ("id", "seq", *ALERT_COLUMNS), ("seq", "seq", *ALERT_COLUMNS))
    _replace("monitoring_alerts", postgres)
    op.create_index("ix_monitoring_alerts_seq", "monitoring_alerts", ["seq"])
    op.create_index(
        "ix_monitoring_alerts_account_id_seq", "monitoring_alerts", ["account_id", "seq"]
    )
    op.create_index("ix_monitoring_alerts_delivery_seq", "monitoring_alerts", ["delivery", "seq"])
    if postgres:
        op.execute("CREATE SEQUENCE monitoring_alert_ids")
        op.execute(
            "SELECT setval('monitoring_alert_ids', "
            "COALESCE((SELECT max(id) FROM monitoring_alerts), 0) + 1, false)"
        )


def _copy(table: str, into: tuple[str, ...], select: tuple[str, ...]) -> None:
    op.execute(
        f"INSERT INTO {table}_new ({', '.join(into)}) SELECT {', '.join(select)} FROM {table}"
    )


def _replace(table: str, postgres: bool) -> None:
    op.drop_table(table)
    op.rename_table(f"{table}_new", table)
    if postgres:
        op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {table}_new_pkey TO {table}_pkey")


def downgrade() -> None:
    raise NotImplementedError("0002 rewrote the keys of events and alerts; restore a backup")

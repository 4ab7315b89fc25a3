"""The first limits schema: accounts, their decision history, appeals, signals, review runs and
idempotency records.

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

# Timestamps are stored in UTC: timestamptz on PostgreSQL, ISO text on SQLite.
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.String(), primary_key=True),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("currency_code", sa.String(), nullable=False),
        sa.Column("credit_line", sa.BigInteger(), nullable=False),
        sa.Column("drawn", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("customer_cap", sa.BigInteger(), nullable=True),
        sa.Column("in_hardship", sa.Boolean(), nullable=False),
        sa.Column("opened_at", Timestamp, nullable=False),
        sa.Column("tier", sa.String(), nullable=True),
        sa.Column("risk_band", sa.String(), nullable=True),
        sa.Column("reopening_stage", sa.Integer(), nullable=False),
        sa.Column("line_before_closure", sa.BigInteger(), nullable=True),
        sa.Column("suspended_at", Timestamp, nullable=True),
        sa.Column("next_review_at", Timestamp, nullable=True),
        sa.Column("automatic_increases", sa.Boolean(), nullable=False),
        sa.Column("hardship", sa.Text(), nullable=True),
        sa.Column("on_time_streak", sa.Integer(), nullable=False),
        sa.Column("last_on_time_repayment_at", Timestamp, nullable=True),
        sa.Column("days_past_due", sa.Integer(), nullable=False),
        sa.Column("open_anomaly", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_accounts_next_review_at", "accounts", ["next_review_at"])

    op.create_table(
        "limit_events",
        sa.Column("event_id", sa.String(), primary_key=True),
        sa.Column(
            "account_id",
            sa.String(),
            sa.ForeignKey("accounts.account_id", name="fk_limit_events_account_id"),
            nullable=False,
        ),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("line_before", sa.BigInteger(), nullable=False),
        sa.Column("line_after", sa.BigInteger(), nullable=False),
        sa.Column("status_before", sa.String(), nullable=False),
        sa.Column("status_after", sa.String(), nullable=False),
        sa.Column("adverse", sa.Boolean(), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("policy_version", sa.String(), nullable=False),
        sa.Column("actor_kind", sa.String(), nullable=False),
        sa.Column("actor_id", sa.String(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("model_name", sa.String(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("notice", sa.Text(), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
    )
    op.create_index(
        "ix_limit_events_account_id_created_at",
        "limit_events",
        ["account_id", "created_at", "event_id"],
    )

    op.create_table(
        "appeals",
        sa.Column("appeal_id", sa.String(), primary_key=True),
        sa.Column(
            "account_id",
            sa.String(),
            sa.ForeignKey("accounts.account_id", name="fk_appeals_account_id"),
            nullable=False,
        ),
        sa.Column(
            "event_id",
            sa.String(),
            sa.ForeignKey("limit_events.event_id", name="fk_appeals_event_id"),
            nullable=False,
        ),
        sa.Column("statement", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("resolution", sa.Text(), nullable=False),
        sa.Column("resolved_at", Timestamp, nullable=True),
    )
    op.create_index(
        "ix_appeals_account_id_created_at", "appeals", ["account_id", "created_at", "appeal_id"]
    )
    op.create_index(
        "ix_appeals_status_created_at", "appeals", ["status", "created_at", "appeal_id"]
    )

    op.create_table(
        "signals",
        sa.Column("signal_id", sa.String(), primary_key=True),
        sa.Column(
            "account_id",
            sa.String(),
            sa.ForeignKey("accounts.account_id", name="fk_signals_account_id"),
            nullable=False,
        ),
        sa.Column(
            "event_id",
            sa.String(),
            sa.ForeignKey("limit_events.event_id", name="fk_signals_event_id"),
            nullable=True,
        ),
        sa.Column("applied_at", Timestamp, nullable=False),
    )

    op.create_table(
        "review_runs",
        sa.Column("run_id", sa.String(), primary_key=True),
        sa.Column("as_of", Timestamp, nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("last_account_id", sa.String(), nullable=False),
        sa.Column("counts", sa.Text(), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
    )

    op.create_table(
        "idempotency_records",
        sa.Column("request_id", sa.String(), primary_key=True),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    tables = (
        "idempotency_records",
        "review_runs",
        "signals",
        "appeals",
        "limit_events",
        "accounts",
    )
    for table in tables:
        op.drop_table(table)

"""Notices: the outbox of what each customer is told of each decision, numbered for a
resumable stream by a counter row, with the delivery the messaging backend acknowledged.

Decisions taken before this revision get no notice (their adverse-action text stays on the
event); only decisions from now on are offered to the messaging backend. The account id leads
every unique key, so the table can be partitioned by account.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "notices",
        sa.Column(
            "account_id",
            sa.String(),
            sa.ForeignKey("accounts.account_id", name="fk_notices_account_id"),
            primary_key=True,
        ),
        sa.Column("notice_id", sa.String(), primary_key=True),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column(
            "event_id",
            sa.String(),
            sa.ForeignKey("limit_events.event_id", name="fk_notices_event_id"),
            nullable=True,
        ),
        sa.Column("appeal_id", sa.String(), nullable=True),
        sa.Column("adverse", sa.Boolean(), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("improvements", sa.Text(), nullable=False),
        sa.Column("how_to_appeal", sa.Text(), nullable=False),
        sa.Column("texts", sa.Text(), nullable=False),
        sa.Column("templates_version", sa.String(), nullable=False),
        sa.Column("policy_version", sa.String(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("due_at", Timestamp, nullable=False),
        sa.Column("delivered_at", Timestamp, nullable=True),
        sa.Column("delivery_channel", sa.String(), nullable=False),
        sa.UniqueConstraint("account_id", "event_id", name="uq_notices_account_id_event_id"),
        sa.UniqueConstraint("account_id", "appeal_id", name="uq_notices_account_id_appeal_id"),
    )
    op.create_index("ix_notices_number", "notices", ["number"])
    op.create_index("ix_notices_notice_id", "notices", ["notice_id"])
    op.create_index("ix_notices_account_id_number", "notices", ["account_id", "number"])
    counters = op.create_table(
        "counters",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(counters, [{"name": "notices", "value": 0}])


def downgrade() -> None:
    op.drop_table("counters")
    op.drop_table("notices")

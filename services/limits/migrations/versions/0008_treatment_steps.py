"""Early collections: the outbox of treatment steps (contacts and stops), numbered for a
resumable stream by their own counter row like the notices, with when the collections system
carried each out; and each customer's time zone, for the quiet hours.

A step's key (its delinquency, its day in it, what it does) is unique per account, so a run
repeated adds nothing. The account id leads every unique key, as in `notices`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("accounts", sa.Column("time_zone", sa.String(), nullable=True))
    op.create_table(
        "treatment_steps",
        sa.Column(
            "account_id",
            sa.String(),
            sa.ForeignKey("accounts.account_id", name="fk_treatment_steps_account_id"),
            primary_key=True,
        ),
        sa.Column("step_key", sa.String(), primary_key=True),
        sa.Column("step_id", sa.String(), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("past_due_since", Timestamp, nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("stop_reason", sa.String(), nullable=False),
        sa.Column("days_past_due", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("offers_hardship", sa.Boolean(), nullable=False),
        sa.Column("time_zone", sa.String(), nullable=False),
        sa.Column("policy_version", sa.String(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("carried_out_at", Timestamp, nullable=True),
    )
    op.create_index("ix_treatment_steps_number", "treatment_steps", ["number"])
    op.create_index("ix_treatment_steps_step_id", "treatment_steps", ["step_id"])
    op.create_index(
        "ix_treatment_steps_account_id_number", "treatment_steps", ["account_id", "number"]
    )
    op.create_index("ix_accounts_days_past_due", "accounts", ["days_past_due", "account_id"])
    counters = sa.table("counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger))
    op.bulk_insert(counters, [{"name": "treatment_steps", "value": 0}])


def downgrade() -> None:
    op.execute("DELETE FROM counters WHERE name = 'treatment_steps'")
    op.drop_index("ix_accounts_days_past_due", "accounts")
    op.drop_table("treatment_steps")
    op.drop_column("accounts", "time_zone")

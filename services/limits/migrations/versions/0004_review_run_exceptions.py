"""A review run records the accounts it could not decide (their risk state could not be
scored), and why, instead of stopping on them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_run_exceptions",
        sa.Column("run_id", sa.String(), primary_key=True),
        sa.Column("account_id", sa.String(), primary_key=True),
        sa.Column("reason", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("review_run_exceptions")

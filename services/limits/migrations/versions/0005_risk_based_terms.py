"""Risk-based terms: each line carries its tier's annual rate, each decision records it, and
an account keeps what its customer last declared (income, debt payments) for the
ability-to-pay check of every raise.

Existing lines are priced at their tier's rate of the policy in force when they are next
decided (until then the tier's current rate stands for them); their earlier decisions keep no
rate. No income was kept before: such accounts have none declared, and no raise passes the
ability-to-pay check until the customer declares one with a requested increase.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("annual_rate_bp", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("declared_monthly_income", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column(
                "declared_monthly_debt_payments",
                sa.BigInteger(),
                nullable=False,
                server_default="0",
            )
        )
    with op.batch_alter_table("limit_events") as batch:
        batch.add_column(sa.Column("annual_rate_bp", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("limit_events") as batch:
        batch.drop_column("annual_rate_bp")
    with op.batch_alter_table("accounts") as batch:
        for name in ("declared_monthly_debt_payments", "declared_monthly_income", "annual_rate_bp"):
            batch.drop_column(name)

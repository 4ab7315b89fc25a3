"""Accounts keep their risk state as monitoring reports it (the profile with the time it
describes, delinquency per loan, the behaviour band, when the last warning came and an open
anomaly since when), and a customer holds one line.

Existing data is carried forward: an open anomaly is dated from the account's suspension (or
opening); a reported profile had no time, so it is kept without one and counts as not fresh
until monitoring reports again; each customer's line is their earliest account that was not a
declined application (lines opened again by the same customer before this revision are left as
they are, and are not the customer's line for new applications).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("profile_at", Timestamp, nullable=True))
        batch.add_column(sa.Column("loans_past_due", sa.Text(), nullable=True))
        batch.add_column(sa.Column("past_due_since", Timestamp, nullable=True))
        batch.add_column(sa.Column("behaviour_band", sa.String(), nullable=True))
        batch.add_column(sa.Column("behaviour_scored_at", Timestamp, nullable=True))
        batch.add_column(sa.Column("last_warning_at", Timestamp, nullable=True))
        batch.add_column(sa.Column("anomaly_since", Timestamp, nullable=True))
    accounts = sa.table(
        "accounts",
        sa.column("open_anomaly", sa.Boolean()),
        sa.column("anomaly_since", Timestamp),
        sa.column("suspended_at", Timestamp),
        sa.column("opened_at", Timestamp),
    )
    op.execute(
        accounts.update()
        .where(accounts.c.open_anomaly == sa.true())
        .values(anomaly_since=sa.func.coalesce(accounts.c.suspended_at, accounts.c.opened_at))
    )
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("open_anomaly")
    op.create_index("ix_accounts_customer_id_opened_at", "accounts", ["customer_id", "opened_at"])

    op.create_table(
        "customer_lines",
        sa.Column("customer_id", sa.String(), primary_key=True),
        sa.Column(
            "account_id",
            sa.String(),
            sa.ForeignKey("accounts.account_id", name="fk_customer_lines_account_id"),
            nullable=False,
        ),
    )
    op.execute(
        """
        INSERT INTO customer_lines (customer_id, account_id)
        SELECT a.customer_id, MIN(a.account_id)
        FROM accounts a
        WHERE a.status <> 'declined'
          AND a.opened_at = (
            SELECT MIN(b.opened_at) FROM accounts b
            WHERE b.customer_id = a.customer_id AND b.status <> 'declined'
          )
        GROUP BY a.customer_id
        """
    )


def downgrade() -> None:
    op.drop_table("customer_lines")
    op.drop_index("ix_accounts_customer_id_opened_at", "accounts")
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(
            sa.Column("open_anomaly", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.execute("UPDATE accounts SET open_anomaly = (anomaly_since IS NOT NULL)")
    with op.batch_alter_table("accounts") as batch:
        for name in (
            "anomaly_since",
            "last_warning_at",
            "behaviour_scored_at",
            "behaviour_band",
            "past_due_since",
            "loans_past_due",
            "profile_at",
        ):
            batch.drop_column(name)

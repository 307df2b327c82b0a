"""result build failures: why an AI read has no SR/SEG, and when its build failed

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 11:00:00
"""

import sqlalchemy as sa
from alembic import op

import clinic.db

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ai_reads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("results_error", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(
            sa.Column("results_failed_at", clinic.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("ai_reads", schema=None) as batch_op:
        batch_op.drop_column("results_failed_at")
        batch_op.drop_column("results_error")

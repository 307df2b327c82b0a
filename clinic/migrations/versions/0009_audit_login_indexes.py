"""audit login indexes: login throttling counts recent failed sign-ins per user name and client

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22 11:05:00
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_action_username_at", ["action", "username", "at"])
        batch_op.create_index("ix_audit_events_action_client_at", ["action", "client", "at"])


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_action_client_at")
        batch_op.drop_index("ix_audit_events_action_username_at")

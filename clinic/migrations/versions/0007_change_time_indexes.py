"""change-time indexes: the FHIR views' incremental sync reads recently changed rows

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 10:50:00
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: (table, column) of every timestamp a FHIR view is re-projected by (integrations.fhir.domain).
INDEXED = (
    ("patients", "updated_at"),
    ("encounters", "updated_at"),
    ("imaging_orders", "updated_at"),
    ("observations", "recorded_at"),
    ("studies", "last_received_at"),
    ("studies", "completed_at"),
    ("ai_reads", "created_at"),
)


def upgrade() -> None:
    for table, column in INDEXED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(batch_op.f(f"ix_{table}_{column}"), [column], unique=False)


def downgrade() -> None:
    for table, column in reversed(INDEXED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_{column}"))

"""Each task keeps the W3C trace context of the request that submitted it, so every run of the
task (its start, a resume after an approval, a continuation after a crash, on any worker)
joins the same trace.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE tasks ADD COLUMN trace_context jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE tasks DROP COLUMN trace_context")

"""An artifact is known by its task and name: writing `chart.png` again replaces it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE UNIQUE INDEX artifacts_task_name_key ON artifacts (task_id, name)")
    op.execute("ALTER TABLE artifacts ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now()")


def downgrade() -> None:
    op.execute("ALTER TABLE artifacts DROP COLUMN updated_at")
    op.execute("DROP INDEX artifacts_task_name_key")

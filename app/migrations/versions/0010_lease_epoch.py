"""Fast takeover with fencing. `epoch` counts the leases a task has been given: every write a
run makes carries it and is refused once another worker holds the task. `delivery` counts the
messages sent for the task; a message older than the newest is a stale duplicate (a dead
worker's message reappearing after its visibility timeout) and is dropped.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE tasks ADD COLUMN epoch bigint NOT NULL DEFAULT 0,
                      ADD COLUMN delivery bigint NOT NULL DEFAULT 0;
    CREATE INDEX tasks_running_lease_idx ON tasks (lease_expires_at) WHERE status = 'RUNNING';
    """)


def downgrade() -> None:
    op.execute("""
    DROP INDEX tasks_running_lease_idx;
    ALTER TABLE tasks DROP COLUMN delivery, DROP COLUMN epoch;
    """)

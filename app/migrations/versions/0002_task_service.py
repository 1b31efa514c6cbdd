"""Task service: per-task options, dispatch order within a conversation, cancellation,
delivery attempts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE tasks
        ADD COLUMN options             jsonb NOT NULL DEFAULT '{}'::jsonb,
        ADD COLUMN dispatched_at       timestamptz,
        ADD COLUMN cancel_requested_at timestamptz,
        ADD COLUMN started_at          timestamptz,
        ADD COLUMN finished_at         timestamptz,
        ADD COLUMN attempts            integer NOT NULL DEFAULT 0;
    -- The next task of a conversation to dispatch: oldest undispatched QUEUED one.
    CREATE INDEX tasks_conversation_queue_idx ON tasks (conversation_id, created_at)
        WHERE status = 'QUEUED' AND dispatched_at IS NULL;
    CREATE INDEX tasks_user_cursor_idx ON tasks (user_id, created_at DESC, id DESC);
    ALTER TABLE approvals ADD COLUMN risk text NOT NULL DEFAULT 'side_effect';
    """)


def downgrade() -> None:
    op.execute("""
    ALTER TABLE approvals DROP COLUMN risk;
    DROP INDEX tasks_user_cursor_idx;
    DROP INDEX tasks_conversation_queue_idx;
    ALTER TABLE tasks DROP COLUMN options, DROP COLUMN dispatched_at,
        DROP COLUMN cancel_requested_at, DROP COLUMN started_at, DROP COLUMN finished_at,
        DROP COLUMN attempts;
    """)

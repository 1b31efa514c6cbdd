"""Large tool results, stored once outside the checkpoints (graph/outputs.py): a
checkpoint's message keeps a stub and the result's SHA-256, which names its row here.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No foreign key to tasks: a row is named by its text, so any task's checkpoint (a later
    # task of the conversation, a fork) may reference a row another task wrote first.
    op.execute("""
    CREATE TABLE tool_outputs (
        digest text PRIMARY KEY,
        task_id uuid NOT NULL,
        chars int NOT NULL,
        content text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """)


def downgrade() -> None:
    # Checkpoints written since hold stubs that name these rows: dropping them would lose
    # those results for good, so a downgrade is refused while any row exists.
    op.execute("""
    DO $$
    BEGIN
        IF EXISTS (SELECT 1 FROM tool_outputs) THEN
            RAISE EXCEPTION 'tool_outputs holds tool results that checkpoints refer to; '
                'a downgrade past revision 0016 would lose them';
        END IF;
    END $$
    """)
    op.execute("DROP TABLE tool_outputs")

"""What followed what: per user, the calls the model made right after a call, counted over
earlier runs. Speculation (graph/speculation.py) starts the likeliest of them ahead.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE tool_sequences (
        user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        after_key text NOT NULL,
        tool text NOT NULL,
        arguments jsonb NOT NULL,
        seen int NOT NULL DEFAULT 1,
        last_seen timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (user_id, after_key, tool, arguments)
    )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE tool_sequences")

"""The policy audit log: every decided tool call, with its verdict and the rule behind it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE policy_decisions (
        id               bigserial PRIMARY KEY,
        created_at       timestamptz NOT NULL DEFAULT now(),
        task_id          uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        user_id          uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        tool_call_id     text NOT NULL,
        role             text NOT NULL,
        tool             text NOT NULL,
        arguments_digest text NOT NULL,
        verdict          text NOT NULL CHECK (verdict IN ('allow', 'approve', 'deny')),
        rule             text NOT NULL,
        reason           text NOT NULL DEFAULT '',
        UNIQUE (task_id, tool_call_id)
    );
    CREATE INDEX policy_decisions_user_idx ON policy_decisions (user_id, created_at);
    """)


def downgrade() -> None:
    op.execute("DROP TABLE policy_decisions")

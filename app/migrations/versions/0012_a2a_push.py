"""A2A push notifications. `a2a_push_configs` holds the URLs an A2A client asked to be told
about a task at (with the token and credentials it wants sent back); `a2a_push_watch` holds,
per task with configs, which API process follows its events to send them (a lease, so a
crashed process's tasks are taken over), the last event sent and whether the task's end was.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE a2a_push_configs (
        task_id uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        id text NOT NULL,
        url text NOT NULL,
        token text,
        auth_scheme text,
        auth_credentials text,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (task_id, id)
    );
    CREATE TABLE a2a_push_watch (
        task_id uuid PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
        base_url text NOT NULL,
        owner text,
        lease_until timestamptz NOT NULL DEFAULT now(),
        after text,
        done boolean NOT NULL DEFAULT false
    );
    CREATE INDEX a2a_push_watch_due_idx ON a2a_push_watch (lease_until) WHERE NOT done;
    """)


def downgrade() -> None:
    op.execute("DROP TABLE a2a_push_watch; DROP TABLE a2a_push_configs;")

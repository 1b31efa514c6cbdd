"""Uploaded files and the tasks they are attached to.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE files (
        id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        user_id      uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name         text NOT NULL,
        content_type text NOT NULL,
        size_bytes   bigint NOT NULL,
        sha256       text NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX files_user_id_idx ON files (user_id, created_at DESC);
    CREATE TABLE task_files (
        task_id uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        file_id uuid NOT NULL REFERENCES files(id) ON DELETE CASCADE,
        PRIMARY KEY (task_id, file_id)
    );
    """)


def downgrade() -> None:
    op.execute("DROP TABLE task_files; DROP TABLE files;")

"""The local knowledge base the `search` tool reads: PostgreSQL full-text search over a
seeded corpus and the users' uploaded text files.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE kb_documents (
        id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        user_id    uuid REFERENCES users(id) ON DELETE CASCADE,  -- NULL: shared (seeded)
        file_id    uuid REFERENCES files(id) ON DELETE CASCADE,
        title      text NOT NULL,
        source     text NOT NULL,
        body       text NOT NULL,
        tsv        tsvector GENERATED ALWAYS AS (
                       setweight(to_tsvector('english', title), 'A') ||
                       setweight(to_tsvector('english', body), 'B')) STORED,
        created_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (source)
    );
    CREATE INDEX kb_documents_tsv_idx ON kb_documents USING gin (tsv);
    CREATE INDEX kb_documents_user_idx ON kb_documents (user_id);
    """)


def downgrade() -> None:
    op.execute("DROP TABLE kb_documents;")

"""Share links: a revocable, read-only link to one conversation's redacted transcript. Only
a digest of the link's token is kept, like API keys.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE share_links (
        id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        token_hash      text NOT NULL UNIQUE,
        conversation_id uuid NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        created_by      uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at      timestamptz NOT NULL DEFAULT now(),
        revoked_at      timestamptz
    );
    CREATE INDEX share_links_conversation_idx ON share_links (conversation_id);
    """)


def downgrade() -> None:
    op.execute("DROP TABLE share_links")

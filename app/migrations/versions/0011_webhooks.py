"""Signed webhooks. A user's signing secret (`whsec_…`, shown once, rotatable) and default
webhook URL; a task's own URL rides in its options. `webhook_deliveries` holds one row per
event and URL: its id is the `webhook-id` every attempt repeats, so receivers can dedupe;
a row that used up its attempts stays as `FAILED`, the dead-letter record.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE users ADD COLUMN webhook_secret text,
                      ADD COLUMN webhook_secret_created_at timestamptz,
                      ADD COLUMN webhook_url text;
    CREATE TABLE webhook_deliveries (
        id text PRIMARY KEY,
        user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        task_id uuid REFERENCES tasks(id) ON DELETE CASCADE,
        event text NOT NULL,
        url text NOT NULL,
        payload text NOT NULL,
        status text NOT NULL DEFAULT 'PENDING'
            CHECK (status IN ('PENDING', 'DELIVERED', 'FAILED')),
        attempts int NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        last_status int,
        last_error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        delivered_at timestamptz
    );
    CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
        WHERE status = 'PENDING';
    CREATE INDEX webhook_deliveries_user_idx ON webhook_deliveries (user_id, created_at DESC);
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE webhook_deliveries;
    ALTER TABLE users DROP COLUMN webhook_url, DROP COLUMN webhook_secret_created_at,
                      DROP COLUMN webhook_secret;
    """)

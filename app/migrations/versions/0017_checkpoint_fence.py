"""The checkpointer's fence in one statement: `cadre_hold_lease` locks the task's row if the
lease is still held (as `tools.ledger.HELD_SQL` does) and raises SQLSTATE CD001 if it is not,
so a checkpoint write under a lease goes to Postgres as one pipeline (the lock, the writes,
the commit) instead of waiting for the lock's answer before writing (graph/builder.py).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE FUNCTION cadre_hold_lease(held_task uuid, held_by text, held_epoch bigint)
    RETURNS boolean LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM 1 FROM tasks
        WHERE id = held_task AND lease_owner = held_by AND epoch = held_epoch FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'task % is no longer leased to % (epoch %)',
                held_task, held_by, held_epoch USING ERRCODE = 'CD001';
        END IF;
        RETURN true;
    END $$
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION cadre_hold_lease(uuid, text, bigint)")

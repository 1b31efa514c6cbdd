"""The typed run record: each `agent_logs` row keeps its step as JSON (`record`, with its
`kind` and `agent` as columns) beside the columns the design names. A step number is unique
within its task, so a node that runs again after a crash or a resume cannot record a step
twice; duplicates such re-runs left in older rows are removed first (the earliest is kept).
Rows written before this revision have no `record` and are read from their columns.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE agent_logs ADD COLUMN kind text, ADD COLUMN agent text, ADD COLUMN record jsonb;
    DELETE FROM agent_logs a USING agent_logs b
     WHERE a.task_id = b.task_id AND a.step_number = b.step_number AND a.id > b.id;
    DROP INDEX agent_logs_task_id_idx;
    CREATE UNIQUE INDEX agent_logs_task_step_idx ON agent_logs (task_id, step_number);
    """)


def downgrade() -> None:
    op.execute("""
    DROP INDEX agent_logs_task_step_idx;
    CREATE INDEX agent_logs_task_id_idx ON agent_logs (task_id, step_number);
    ALTER TABLE agent_logs DROP COLUMN record, DROP COLUMN agent, DROP COLUMN kind;
    """)

"""Schedules: a user's task that runs on a cron expression in a time zone. Each schedule has
its own conversation (given, or made for it), so its runs are ordered and a run still going
when the next is due follows the schedule's `multitask_strategy`. `schedule_runs` has one row
per fired (or skipped) occurrence: its key makes each occurrence fire once however many
workers tick, and `sent_at` stays empty until the task's message reached the queue.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE schedules (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        conversation_id uuid NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        cron text NOT NULL,
        timezone text NOT NULL,
        input text NOT NULL,
        files uuid[] NOT NULL DEFAULT '{}',
        missed text NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'catch_up')),
        multitask_strategy text NOT NULL DEFAULT 'enqueue'
            CHECK (multitask_strategy IN ('enqueue', 'reject', 'interrupt')),
        paused boolean NOT NULL DEFAULT false,
        next_run_at timestamptz NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX schedules_due_idx ON schedules (next_run_at) WHERE NOT paused;
    CREATE INDEX schedules_user_idx ON schedules (user_id, created_at DESC);
    CREATE TABLE schedule_runs (
        schedule_id uuid NOT NULL REFERENCES schedules(id) ON DELETE CASCADE,
        occurrence_at timestamptz NOT NULL,
        task_id uuid REFERENCES tasks(id) ON DELETE SET NULL,
        outcome text NOT NULL CHECK (outcome IN ('submitted', 'skipped', 'refused')),
        detail text,
        created_at timestamptz NOT NULL DEFAULT now(),
        sent_at timestamptz,
        PRIMARY KEY (schedule_id, occurrence_at)
    );
    CREATE INDEX schedule_runs_unsent_idx ON schedule_runs (created_at)
        WHERE outcome = 'submitted' AND sent_at IS NULL;
    """)


def downgrade() -> None:
    op.execute("DROP TABLE schedule_runs; DROP TABLE schedules")

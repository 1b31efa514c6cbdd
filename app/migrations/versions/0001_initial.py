"""Cadre's own tables: users, keys, conversations, tasks, logs, approvals, the tool-call
ledger and artifacts.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_UPGRADE = """
CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL UNIQUE,
    display_name  text,
    role          text NOT NULL DEFAULT 'analyst'
                  CHECK (role IN ('viewer', 'analyst', 'operator', 'admin')),
    password_hash text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         text NOT NULL DEFAULT '',
    prefix       text NOT NULL,
    key_hash     text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);

CREATE TABLE conversations (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title      text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_user_id_idx ON conversations (user_id, updated_at DESC);

CREATE TABLE tasks (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    conversation_id  uuid NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'QUEUED'
                     CHECK (status IN ('QUEUED', 'RUNNING', 'PENDING_APPROVAL',
                                       'SUCCEEDED', 'FAILED', 'CANCELLED')),
    input            text NOT NULL,
    final_output     text,
    error            jsonb,
    usage            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz
);
CREATE INDEX tasks_user_id_idx ON tasks (user_id, created_at DESC);
CREATE INDEX tasks_status_idx ON tasks (status);
CREATE INDEX tasks_conversation_id_idx ON tasks (conversation_id, created_at);

CREATE TABLE agent_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    step_number integer NOT NULL,
    node        text NOT NULL,
    thought     text,
    tool_name   text,
    tool_input  jsonb,
    tool_output jsonb,
    tokens_in   integer NOT NULL DEFAULT 0,
    tokens_out  integer NOT NULL DEFAULT 0,
    latency_ms  integer,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_logs_task_id_idx ON agent_logs (task_id, step_number);

CREATE TABLE approvals (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id      uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    tool_call_id text NOT NULL,
    tool_name    text NOT NULL,
    tool_input   jsonb NOT NULL DEFAULT '{}'::jsonb,
    reason       text NOT NULL DEFAULT '',
    status       text NOT NULL DEFAULT 'PENDING'
                 CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED')),
    decided_by   uuid REFERENCES users(id) ON DELETE SET NULL,
    comment      text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    decided_at   timestamptz,
    UNIQUE (task_id, tool_call_id)
);
CREATE INDEX approvals_status_idx ON approvals (status);

-- The idempotency ledger: a side effect is done once its row says SUCCEEDED.
CREATE TABLE tool_calls (
    idempotency_key text PRIMARY KEY,
    task_id         uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    tool_call_id    text NOT NULL,
    tool_name       text NOT NULL,
    arguments       jsonb NOT NULL DEFAULT '{}'::jsonb,
    status          text NOT NULL DEFAULT 'STARTED'
                    CHECK (status IN ('STARTED', 'SUCCEEDED', 'FAILED')),
    result          jsonb,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
CREATE INDEX tool_calls_task_id_idx ON tool_calls (task_id);

CREATE TABLE artifacts (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id      uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    name         text NOT NULL,
    content_type text NOT NULL DEFAULT 'application/octet-stream',
    size_bytes   bigint NOT NULL,
    sha256       text NOT NULL,
    uri          text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX artifacts_task_id_idx ON artifacts (task_id);
"""

_DOWNGRADE = """
DROP TABLE artifacts;
DROP TABLE tool_calls;
DROP TABLE approvals;
DROP TABLE agent_logs;
DROP TABLE tasks;
DROP TABLE conversations;
DROP TABLE api_keys;
DROP TABLE users;
"""


def upgrade() -> None:
    op.execute(_UPGRADE)


def downgrade() -> None:
    op.execute(_DOWNGRADE)

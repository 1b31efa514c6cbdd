"""Vectors on pgvector: the exact model-call cache, the semantic task cache (with the plans
new tasks may start from), long-term memories, and the knowledge base's chunks for hybrid
retrieval. Every vector has 384 dimensions (tools/embeddings.py); the model that made it is
kept beside it, and searches match on it, so vectors of two models are never compared. The
shared knowledge base's passages have an HNSW index for cosine distance; a user's own
passages, cache entries and memories are searched exactly.

Production needs only `CREATE EXTENSION vector` run once by an administrator (the embedded
PostgreSQL carries the extension; the migration creates it where the role may).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE EXTENSION IF NOT EXISTS vector;

    -- One model reply per exact request (model, window, tools, settings) of one user.
    CREATE TABLE model_cache (
        key         text PRIMARY KEY,
        user_id     uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        model       text NOT NULL,
        message     jsonb NOT NULL,
        tokens_in   integer NOT NULL,
        tokens_out  integer NOT NULL,
        hits        integer NOT NULL DEFAULT 0,
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX model_cache_created_idx ON model_cache (created_at);  -- the sweep

    -- Successful tasks another task may be answered from (semantic cache) or start its
    -- plan from (plan reuse). `cacheable`: read-only tools only, no side effect, no approval,
    -- no files written. `scope`: user:<id>, or shared:<name> when the task named one.
    CREATE TABLE task_cache (
        task_id         uuid PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
        user_id         uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        scope           text NOT NULL,
        input           text NOT NULL,
        files_hash      text NOT NULL,
        tools           text[] NOT NULL DEFAULT '{}',
        live            boolean NOT NULL,
        cacheable       boolean NOT NULL,
        answer          text NOT NULL,
        plan            jsonb NOT NULL DEFAULT '[]',
        -- Where untrusted content in its context came from: an answer served from it
        -- brings that taint into the new task's conversation.
        untrusted       text[] NOT NULL DEFAULT '{}',
        embedding_model text NOT NULL,
        embedding       vector(384) NOT NULL,
        created_at      timestamptz NOT NULL DEFAULT now()
    );
    -- Searched per user, exactly (no HNSW index: pgvector 0.6 filters an index scan's
    -- nearest rows afterwards, so one user's rows could be missed among everyone's).
    CREATE INDEX task_cache_user_idx ON task_cache (user_id, embedding_model);
    CREATE INDEX task_cache_scope_idx ON task_cache (scope);
    CREATE INDEX task_cache_created_idx ON task_cache (created_at);

    -- What the agent remembers for a user, across conversations.
    CREATE TABLE memories (
        id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        user_id         uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        content         text NOT NULL,
        -- Learned while untrusted content was in context: the sources it came from.
        tainted_by      text[] NOT NULL DEFAULT '{}',
        task_id         uuid REFERENCES tasks(id) ON DELETE SET NULL,
        embedding_model text NOT NULL,
        embedding       vector(384) NOT NULL,
        created_at      timestamptz NOT NULL DEFAULT now()
    );
    -- Searched per user, exactly, like task_cache.
    CREATE INDEX memories_user_idx ON memories (user_id, created_at DESC);

    -- The knowledge base's documents in passages, each searchable by words and by meaning.
    -- `title` is the document's, copied so a passage's words are ranked with its title's
    -- (weighted like kb_documents.tsv) from the one GIN index.
    CREATE TABLE kb_chunks (
        id              bigserial PRIMARY KEY,
        document_id     uuid NOT NULL REFERENCES kb_documents(id) ON DELETE CASCADE,
        -- The document's owner (NULL: shared), copied so the indexes can tell them apart.
        user_id         uuid REFERENCES users(id) ON DELETE CASCADE,
        ordinal         integer NOT NULL,
        title           text NOT NULL,
        body            text NOT NULL,
        tsv             tsvector GENERATED ALWAYS AS (
                            setweight(to_tsvector('english', title), 'A') ||
                            setweight(to_tsvector('english', body), 'B')) STORED,
        embedding_model text,
        embedding       vector(384),
        UNIQUE (document_id, ordinal)
    );
    CREATE INDEX kb_chunks_tsv_idx ON kb_chunks USING gin (tsv);
    -- The shared passages by meaning through HNSW; a user's own exactly (by user_id), so
    -- none is lost to the index scan's filtering (pgvector 0.6 filters afterwards).
    CREATE INDEX kb_chunks_shared_embedding_idx ON kb_chunks
        USING hnsw (embedding vector_cosine_ops) WHERE user_id IS NULL;
    CREATE INDEX kb_chunks_user_idx ON kb_chunks (user_id) WHERE user_id IS NOT NULL;
    """)


def downgrade() -> None:
    op.execute("DROP TABLE kb_chunks; DROP TABLE memories; DROP TABLE task_cache; "
               "DROP TABLE model_cache;")

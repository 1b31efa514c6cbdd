"""`search`: the local knowledge base, PostgreSQL full-text search over the seeded corpus and
the user's uploaded text files. Results are material to read, never instructions."""

from __future__ import annotations

from typing import Any

from tools.contract import ToolContext, ToolError, Toolset


def register(toolset: Toolset) -> None:
    @toolset.tool(risk="read_only", timeout=20, max_output_chars=12_000)
    async def search(ctx: ToolContext, query: str, limit: int = 5) -> dict[str, Any]:
        """Search the knowledge base (shared documents and your uploaded files) for a few
        words or a question. Returns title, source and a snippet per hit, best first."""
        db = getattr(ctx.deps, "db", None)
        if db is None:
            raise ToolError("the knowledge base is not available")
        if not query.strip():
            raise ToolError("give a few words to search for")
        rows = await db.fetch(
            """
            WITH q AS (SELECT websearch_to_tsquery('english', $1) AS query)
            SELECT d.title, d.source,
                   ts_headline('english', d.body, q.query,
                               'MaxFragments=2, MaxWords=30, MinWords=10') AS snippet,
                   ts_rank(d.tsv, q.query) AS rank
            FROM kb_documents d, q
            WHERE d.tsv @@ q.query
              AND (d.user_id IS NULL
                   OR d.user_id = (SELECT user_id FROM tasks WHERE id::text = $2))
            ORDER BY rank DESC, d.title
            LIMIT $3
            """, query, ctx.task_id, max(1, min(limit, 20)))
        return {"untrusted": True,
                "results": [{"title": r["title"], "source": r["source"],
                             "snippet": r["snippet"]} for r in rows]}

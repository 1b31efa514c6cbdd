"""The semantic task cache and plan reuse, on pgvector.

A task that opens its conversation may be answered, without running, from an earlier
successful task of the same user whose text means the same (cosine similarity of their
embeddings at or above the threshold) and whose specifics are the same (`key_terms`:
numbers, dates, names...; `substituted`: not the same frame around another word), when all
of these hold for the earlier one: it opened its conversation too (its answer depended on
nothing said before), it ran read-only tools only, it needed no approval, it had the same
uploaded files (by content hash), and it is younger than the TTL (`live_ttl_seconds` for one
whose tools read live data, `Tool.live_data`: the web, a database). A task uses the cache
when it asks (`cache: true`) or the deployment turns it on; `cache: false` ("run again")
never does.

Plan reuse: a task similar enough to an earlier one of the same user (`PLAN_SIMILARITY`) that
ran a plan starts from that plan; the planner revises it instead of writing one from
nothing. A request in the very same words is left to the model-call cache."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from app.store.steps import task_steps
from app.store.tasks import task_options
from graph.steps import PlanMade, ToolHeld, ToolProposed, ToolRan
from tools.contract import Toolset
from tools.embeddings import Embedder, EmbeddingUnavailable, literal

log = logging.getLogger("cadre.cache")

# Below the threshold by at most this much: reported as a near miss (tuning the threshold).
NEAR_MISS_MARGIN = 0.03
# How alike an earlier task must be for its plan to be a starting point.
PLAN_SIMILARITY = 0.90
CANDIDATES = 10
# Seconds an embedding may take on a task's path before the task goes on without the cache.
EMBED_SECONDS = 5.0
# Words of a request compared for a substituted word (the comparison is quadratic).
COMPARED_WORDS = 200

Outcome = Literal["hit", "miss", "near_miss", "bypassed"]


@dataclass(frozen=True, kw_only=True)
class Earlier:
    """An earlier task a new one resembles."""

    task_id: str
    answer: str
    at: datetime
    similarity: float
    plan: list[str]
    # Where untrusted content in its context came from: a task answered with it has it too.
    untrusted: list[str]


@dataclass(frozen=True, kw_only=True)
class Lookup:
    outcome: Outcome | None  # None: the cache was not asked (not wanted, or not eligible)
    hit: Earlier | None = None
    nearest: Earlier | None = None  # the closest cacheable one, for a near miss
    plan_from: Earlier | None = None
    embedding: list[float] | None = None


@dataclass(frozen=True, kw_only=True)
class TaskCache:
    db: asyncpg.Pool
    embedder: Embedder
    toolset: Toolset
    threshold: float
    ttl_seconds: int
    live_ttl_seconds: int
    plan_reuse: bool = True

    async def lookup(self, task: Any, *, wanted: bool) -> Lookup:
        """What the cache knows for `task` (a `tasks` row): a hit when `wanted`, and a plan
        to start from either way. A task in the middle of a conversation, or a fork, gets
        neither: what it means depends on what came before."""
        options = task_options(task)
        bypassed = options.get("cache") is False
        wanted = wanted and not bypassed
        told: Outcome | None = "bypassed" if bypassed else None
        if options.get("fork") or not (wanted or self.plan_reuse) or \
                not await self._opens_conversation(task):
            return Lookup(outcome=told)
        embedding = await self._embed(task)
        if embedding is None:
            return Lookup(outcome="miss" if wanted else told)
        files = await self._files_hash(task["id"])
        terms = key_terms(task["input"])
        # A shared scope (`cache_scope`) is searched by everyone who names it; else the
        # user's own entries. Among equally close entries the newest wins (a run again).
        rows = await self.db.fetch(
            """
            SELECT c.task_id, c.input, c.answer, c.plan, c.untrusted, c.created_at, c.live,
                   c.cacheable, c.files_hash, 1 - (c.embedding <=> $1::vector) AS similarity,
                   extract(epoch FROM now() - c.created_at) AS age
            FROM task_cache c JOIN tasks t ON t.id = c.task_id AND t.status = 'SUCCEEDED'
            WHERE CASE WHEN $6::text IS NULL THEN c.user_id = $2::uuid AND c.scope = $7
                       ELSE c.scope = $6 END
              AND c.embedding_model = $3 AND c.task_id <> $4::uuid
            ORDER BY c.embedding <=> $1::vector, c.created_at DESC
            LIMIT $5
            """, literal(embedding), task["user_id"], self.embedder.model, task["id"],
            CANDIDATES, shared_scope(options), f"user:{task['user_id']}")
        same_words = any(row["input"] == task["input"] for row in rows)
        hit = nearest = plan_from = None
        for row in rows:
            earlier = Earlier(task_id=str(row["task_id"]), answer=row["answer"],
                              at=row["created_at"], similarity=float(row["similarity"]),
                              plan=json.loads(row["plan"]), untrusted=list(row["untrusted"]))
            ttl = self.live_ttl_seconds if row["live"] else self.ttl_seconds
            usable = (row["cacheable"] and row["files_hash"] == files and row["age"] < ttl
                      and key_terms(row["input"]) == terms
                      and not substituted(row["input"], task["input"]))
            if usable and earlier.similarity >= self.threshold and hit is None:
                hit = earlier
            if row["cacheable"] and nearest is None:
                nearest = earlier
            # The very same words are the model-call cache's: a reference plan would change
            # the planner's prompt, and so every call after it.
            alike = earlier.similarity >= PLAN_SIMILARITY and not same_words
            if earlier.plan and alike and plan_from is None:
                plan_from = earlier
        outcome = told
        if wanted:
            near = nearest is not None and nearest.similarity >= self.threshold - NEAR_MISS_MARGIN
            outcome = "hit" if hit else "near_miss" if near else "miss"
        return Lookup(outcome=outcome, hit=hit if wanted else None, nearest=nearest,
                      plan_from=plan_from if self.plan_reuse else None, embedding=embedding)

    async def record(self, task: Any, answer: str, *, embedding: list[float] | None = None,
                     untrusted: list[str] | None = None) -> bool:
        """Keep a task that is succeeding with `answer` for later lookups (its plan always;
        its answer only when it may be served again); lookups see it once its end is
        recorded. False when it is not kept (it did not open its conversation, or it was
        itself answered from the cache)."""
        options = task_options(task)
        if options.get("cached_from") or options.get("fork") or \
                not await self._opens_conversation(task):
            return False
        steps = (await task_steps(self.db, [task["id"]])).get(str(task["id"]), [])
        # The first plan: made from the task's words alone, before any tool's output (a
        # revised one may follow what a web page said). None from a flagged task's words.
        plans = [s for s in steps if isinstance(s, PlanMade)]
        plan = [item.description for item in plans[0].steps] \
            if plans and not options.get("input_flags") else []
        ran = {s.tool for s in steps if isinstance(s, ToolRan)}
        proposed = {s.tool for s in steps if isinstance(s, ToolProposed)}
        held = any(isinstance(s, ToolHeld) for s in steps)
        # Anything but reading (even a side effect the policy refused) is never served again,
        # nor is an answer that comes with files the task wrote.
        cacheable = (all(self._risk(name) == "read_only" for name in ran | proposed)
                     and not held and not await self._wrote_files(task["id"]))
        if embedding is None:
            embedding = await self._embed(task)
            if embedding is None:
                return False
        await self.db.execute(
            """
            INSERT INTO task_cache (task_id, user_id, scope, input, files_hash, tools, live,
                                    cacheable, answer, plan, untrusted, embedding_model,
                                    embedding)
            VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12,
                    $13::vector)
            ON CONFLICT (task_id) DO UPDATE SET answer = EXCLUDED.answer,
                cacheable = EXCLUDED.cacheable, tools = EXCLUDED.tools, live = EXCLUDED.live,
                plan = EXCLUDED.plan, untrusted = EXCLUDED.untrusted, created_at = now()
            """, task["id"], task["user_id"],
            shared_scope(options) or f"user:{task['user_id']}", task["input"],
            await self._files_hash(task["id"]), sorted(ran),
            any(self._live(name) for name in ran), cacheable, answer, json.dumps(plan),
            list(untrusted or []), self.embedder.model, literal(embedding))
        return True

    async def _embed(self, task: Any) -> list[float] | None:
        """The request's embedding, or None (logged) when the endpoint fails or is slow: the
        task then goes on without the cache."""
        try:
            async with asyncio.timeout(EMBED_SECONDS):
                return await self.embedder.query(task["input"])
        except (EmbeddingUnavailable, TimeoutError) as exc:
            log.warning("task %s: the cache is skipped: %s", task["id"],
                        exc or f"no embedding within {EMBED_SECONDS:g} s")
            return None

    async def _wrote_files(self, task_id: Any) -> bool:
        return bool(await self.db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM artifacts WHERE task_id = $1::uuid)", task_id))

    def _live(self, name: str) -> bool:
        tool = self.toolset.get(name)
        return tool is None or tool.live_data

    def _risk(self, name: str) -> str:
        tool = self.toolset.get(name)
        return tool.risk if tool is not None else "destructive"

    async def _opens_conversation(self, task: Any) -> bool:
        return not await self.db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tasks t, tasks me WHERE me.id = $1::uuid "
            "AND t.conversation_id = me.conversation_id AND t.id <> me.id "
            "AND t.created_at <= me.created_at)", task["id"])

    async def _files_hash(self, task_id: Any) -> str:
        """The task's uploaded files by content, order aside ("" when it has none)."""
        hashes = await self.db.fetch(
            "SELECT f.sha256 FROM task_files t JOIN files f ON f.id = t.file_id "
            "WHERE t.task_id = $1::uuid ORDER BY f.sha256", task_id)
        if not hashes:
            return ""
        return hashlib.sha256(",".join(r["sha256"] for r in hashes).encode()).hexdigest()


_MONTHS = frozenset({
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "monday", "tuesday", "wednesday", "thursday", "friday",
    "saturday", "sunday", "today", "yesterday", "tomorrow"})
_TERM = re.compile(
    r"""(?P<quoted>"[^"]+"|'[^']{2,}')"""
    r"|(?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"
    r"|(?P<url>https?://\S+)"
    r"|(?P<number>\d+(?:[.,:/-]\d+)*%?)"
    r"|(?P<word>[\w'-]+)")


def key_terms(text: str) -> frozenset[str]:
    """The specifics of a request, which two requests that mean the same must share: numbers,
    dates, days and months, emails, URLs, quoted text, words with digits, and names
    (capitalised words not opening a sentence). Embeddings place "orders in March" next to
    "orders in April" (0.98 alike with e5-small); these tell them apart."""
    found: set[str] = set()
    opening = True
    for match in _TERM.finditer(text):
        token = match.group(0)
        kind = match.lastgroup
        if kind in ("quoted", "email", "url", "number"):
            found.add(token.strip("\"'").rstrip(".,;:!?)").lower())
        else:
            bare = re.sub(r"'s$", "", token)
            lower = bare.lower()
            named = bare[:1].isupper() and not opening and len(bare) > 1
            if named or lower in _MONTHS or any(c.isdigit() for c in bare):
                found.add(lower)
        opening = False
        rest = text[match.end():match.end() + 2]
        if rest[:1] in ".!?" or "\n" in rest:
            opening = True
    return frozenset(found)


# Words that frame a request rather than say what it is about.
_FRAMING = frozenset({
    "a", "an", "the", "of", "on", "in", "at", "to", "for", "from", "by", "with", "about", "into",
    "over", "per", "and", "or", "is", "are", "was", "were", "be", "do", "does", "did", "what",
    "what's", "whats", "which", "who", "how", "much", "many", "me", "my", "i", "you", "your",
    "please", "tell", "give", "show", "find", "get", "list", "let", "could", "can", "would",
    "will", "should", "just", "now", "briefly", "short", "quick", "some", "any", "this", "that",
    "it", "its"})


def substituted(a: str, b: str) -> bool:
    """Whether `b` is `a` with a word of substance put in another's place ("the costs tab" /
    "the revenue tab", "an apple" / "a banana"): the same frame around other specifics,
    which embeddings score as the same request (0.95 and more with e5-small). Two wordings
    of one request differ in their frame instead, and are left to the similarity."""
    words_a, words_b = _words(a)[:COMPARED_WORDS], _words(b)[:COMPARED_WORDS]
    matcher = difflib.SequenceMatcher(a=words_a, b=words_b, autojunk=False)
    if matcher.ratio() < 0.6:
        return False
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "replace" and (set(words_a[i1:i2]) | set(words_b[j1:j2])) - _FRAMING:
            return True
    return False


def _words(text: str) -> list[str]:
    return [re.sub(r"'s$", "", w) for w in re.findall(r"[\w'-]+", text.lower())]


# Entries are kept this long at least: past the answer's TTL, the plan still serves.
PLAN_KEEP_SECONDS = 30 * 24 * 3600


async def sweep(db: asyncpg.Pool, *, model_cache_ttl: int, task_cache_ttl: int) -> int:
    """Delete expired model replies, and task entries past both their TTL and the time plans
    are kept; returns how many went."""
    gone = 0
    for sql, seconds in (
            ("DELETE FROM model_cache WHERE created_at < now() - make_interval(secs => $1)",
             model_cache_ttl),
            ("DELETE FROM task_cache WHERE created_at < now() - make_interval(secs => $1)",
             max(task_cache_ttl, PLAN_KEEP_SECONDS))):
        status = await db.execute(sql, seconds)
        gone += int(status.rsplit(" ", 1)[-1])
    return gone


def shared_scope(options: dict[str, Any]) -> str | None:
    """The task's explicitly shared cache scope (`cache_scope`), as stored; None: its user's."""
    name = options.get("cache_scope")
    return f"shared:{name}" if name else None


"""Speculative tool execution: run the read-only calls the model is likely to ask for next
while it is still thinking, and hand a call's result over when the model does ask for it.

Where predictions come from, as `plan` or `act` asks the model:
- the plan step in progress (while planning, the task itself): "search for X" →
  `search(query=X)`; a URL in it → `fetch_url`;
- the previous results: the top links of a `search` result → `fetch_url` of them, from the
  model's last turn and, chained, as soon as a speculative search itself returns;
- the user's earlier runs (`tool_sequences`, learned): calls that followed the previous
  turn's calls at least twice before.
And during the model's answer: a tool call whose arguments are complete in the stream
starts before the message ends.

A speculative call is used only when the model asks for the same call (same tool, the same
arguments once validated and whitespace-normalised); otherwise it is cancelled or its result
dropped, never shown to the model. Only read-only tools that the policy allows for this
role and these arguments without a person's approval are speculated — never a side effect,
never a call the policy (or untrusted content) would hold; a call runs under the tool's own
sandbox and SSRF rules, at most `limit` predictions a turn, none past the deadline, and all
are cancelled when the run ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from opentelemetry.trace import Span
from pydantic import ValidationError
from redis.asyncio import Redis

from graph.outputs import OutputStore
from graph.tracing import TRACER
from guardrails import Allow, Policy, PolicyCall
from tools import Tool, ToolContext, ToolOutcome, Toolset

Source = Literal["stream", "plan", "results", "history"]
METRICS = "cadre:metrics:speculation"

_SEARCH = re.compile(r"\b(?:search|look up|google)\b(?:\s+(?:the web|online|the knowledge "
                     r"base|the kb))?\s+(?:for|about)\s+(.+)", re.IGNORECASE)
# Where a request in running text ends: "search for X. Then ..." asks for X.
_CLAUSE = re.compile(r"[.;!?\n]|,\s*(?:then|and then)\b|\s+then\s+", re.IGNORECASE)
_QUOTES = "\"'\u201c\u201d\u2018\u2019"
_URL = re.compile(r"https?://[^\s\"'<>\\)\]]+")


def call_key(tool: Tool, arguments: Mapping[str, Any]) -> str | None:
    """The call's identity for matching: the tool and its validated arguments (defaults
    filled in), strings with their whitespace collapsed. None if the arguments are invalid."""
    try:
        validated = tool.validate(arguments).model_dump(mode="json")
    except ValidationError:
        return None
    return tool.name + " " + json.dumps(_squash(validated), sort_keys=True, ensure_ascii=False)


def _squash(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, dict):
        return {k: _squash(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_squash(v) for v in value]
    return value


@dataclass(kw_only=True, eq=False)
class Speculated:
    """A call started ahead of the model's asking."""

    key: str
    tool: Tool
    arguments: dict[str, Any]
    source: Source
    started: float
    task: asyncio.Task[ToolOutcome]
    span: Span
    finished: float | None = None
    # Turn ends it survives unasked: a chained call is for the turn after the next.
    turns: int = 1

    def saved_ms(self, now: float) -> int:
        """How much of the call had run by `now`, when the model's call for it came."""
        return int((min(now, self.finished or now) - self.started) * 1000)


@dataclass(kw_only=True, eq=False)
class Speculator:
    """One run's speculative calls. `begin_turn` predicts and starts; the stream offers
    completed calls (`offer_chunks`); `take` hands one to `execute`; `end_turn` drops the
    rest; `aclose` cancels everything when the run ends."""

    toolset: Toolset
    policy: Policy
    tool_deps: Any = None
    db: asyncpg.Pool | None = None  # the learned table; None: no history predictions
    redis: Redis | None = None  # metrics; None: not counted
    limit: int = 3
    links: int = 2  # `fetch_url`s predicted from one search result
    # Large results of the last turn, read whole (else the links of their stubs' start and end).
    outputs: OutputStore | None = None
    running: dict[str, Speculated] = field(default_factory=dict)
    _state: dict[str, Any] = field(default_factory=dict)
    _streamed: dict[tuple[Any, int], dict[str, str]] = field(default_factory=dict)
    _user: str | None = None
    _counts: dict[str, int] = field(default_factory=dict)
    # Calls not predicted again this run: the model took them already, or did not want them.
    _declined: set[str] = field(default_factory=set)
    _budget: int = 0
    _closed: bool = False

    # -- a turn ------------------------------------------------------------------------------

    async def begin_turn(self, state: Mapping[str, Any], *, planning: bool = False) -> None:
        """Called as `plan` or `act` asks the model: start this turn's predictions (at most
        `limit`, chained ones included)."""
        self._state = dict(state)
        self._streamed.clear()
        self._budget = self.limit
        self._closed = False  # a new run on the same deps (a resume)
        for tool_name, arguments, source in await self.predict(state, planning=planning):
            if self._budget <= 0:
                break
            self.start(tool_name, arguments, source)

    async def predict(self, state: Mapping[str, Any], *, planning: bool = False,
                      ) -> list[tuple[str, dict[str, Any], Source]]:
        """Likely next calls, most likely first, without duplicates."""
        found: list[tuple[str, dict[str, Any], Source]] = []
        if not planning:
            results: Sequence[AnyMessage] = _last_results(state)
            if self.outputs is not None:
                results = await self.outputs.resolve(results)
            for message in results:
                if isinstance(message, ToolMessage) and message.status == "success":
                    found += [(t, a, "results")
                              for t, a in self._after(message.name or "", str(message.content))]
        found += [(t, a, "plan") for t, a in self._from_plan(state, planning)]
        if not planning:
            found += [(t, a, "history") for t, a in await self._from_history(state)]
        seen: set[str] = set()
        unique = []
        for tool_name, arguments, source in found:
            tool = self.toolset.get(tool_name)
            key = call_key(tool, arguments) if tool is not None else None
            if key is not None and key not in seen:
                seen.add(key)
                unique.append((tool_name, arguments, source))
        return unique

    def start(self, tool_name: str, arguments: dict[str, Any], source: Source, *,
              turns: int = 1) -> Speculated | None:
        """Start the call if it may be speculated and is not running yet; None otherwise.
        A prediction (any source but the stream) spends the turn's budget."""
        tool = self.toolset.get(tool_name)
        key = call_key(tool, arguments) if tool is not None else None
        if tool is None or key is None or key in self.running:
            return None
        if self._closed or (source != "stream" and (key in self._declined or self._budget <= 0)):
            return None
        if not self._safe(tool, arguments):
            self._count(f"{source}|refused")
            return None
        if source != "stream":
            self._budget -= 1
        state = self._state
        ctx = ToolContext(task_id=state.get("task_id", ""),
                          tool_call_id=f"speculative-{uuid.uuid4().hex[:12]}",
                          role=state.get("role", "analyst"), deps=self.tool_deps)
        span = TRACER.start_span(f"speculate {tool.name}", attributes={
            "gen_ai.tool.name": tool.name, "cadre.speculation.source": source,
            "cadre.tool.risk": tool.risk})
        entry: Speculated

        async def call() -> ToolOutcome:
            try:
                outcome = await tool.invoke(ctx, arguments)
            finally:
                entry.finished = time.monotonic()
            if outcome.ok:
                # What the model will likely ask with this result: start it now.
                for name, args in self._after(tool.name, outcome.content):
                    self.start(name, args, "results", turns=2)
            return outcome

        entry = Speculated(key=key, tool=tool, arguments=arguments, source=source,
                           started=time.monotonic(), task=asyncio.create_task(call()),
                           span=span, turns=turns)
        self.running[key] = entry
        self._count(f"{source}|started")
        return entry

    def take(self, tool_name: str, arguments: Mapping[str, Any]) -> Speculated | None:
        """The running or finished speculative call the model just asked for, if any."""
        tool = self.toolset.get(tool_name)
        key = call_key(tool, arguments) if tool is not None else None
        entry = self.running.pop(key, None) if key is not None else None
        if key is not None:
            self._declined.add(key)  # made now: predicting it again would only waste it
        if entry is not None:
            entry.span.set_attribute("cadre.speculation.used", True)
            entry.span.end()
        return entry

    def used(self, entry: Speculated, saved_ms: int) -> None:
        self._count(f"{entry.source}|hit")
        self._count("saved_ms", saved_ms)

    async def end_turn(self, *, final: bool = False) -> None:
        """Drop the speculative calls the model did not ask for this turn (with `final`,
        all): cancelled, or their results thrown away. A chained call waits one turn more."""
        dropped = [e for e in self.running.values() if final or e.turns <= 1]
        for entry in self.running.values():
            entry.turns -= 1
        for entry in dropped:
            del self.running[entry.key]
        for entry in dropped:
            self._declined.add(entry.key)
            entry.task.cancel()
            entry.span.set_attribute("cadre.speculation.used", False)
            entry.span.end()
            self._count(f"{entry.source}|wasted")
        for entry in dropped:
            with contextlib.suppress(BaseException):
                await entry.task
        await self._flush()

    async def aclose(self) -> None:
        self._closed = True  # a call finishing now chains nothing
        await self.end_turn(final=True)

    # -- calls completed mid-stream -----------------------------------------------------------

    def offer_chunks(self, run_id: Any, chunks: Sequence[Mapping[str, Any]]) -> None:
        """Tool-call chunks of the model's answer as they stream: a call whose arguments
        form a complete JSON object starts now, if it may be speculated."""
        for chunk in chunks:
            index = int(chunk.get("index") or 0)
            call = self._streamed.setdefault((run_id, index), {"name": "", "args": ""})
            if call.get("done"):
                continue
            call["name"] += chunk.get("name") or ""
            call["args"] += chunk.get("args") or ""
            try:
                arguments = json.loads(call["args"] or "null")
            except ValueError:
                continue
            if isinstance(arguments, dict) and call["name"]:
                call["done"] = "1"
                self.start(call["name"], arguments, "stream")

    # -- learning ----------------------------------------------------------------------------

    async def learn(self, state: Mapping[str, Any], calls: Sequence[tuple[str, dict[str, Any]]]
                    ) -> None:
        """Remember that `calls` followed the previous turn's calls, for the user's later
        runs."""
        if self.db is None or not calls:
            return
        before = self._previous_keys(state, skip_last=True)
        if not before:
            return
        user = await self._user_id(state)
        if user is None:
            return
        rows = [(user, prev, name, json.dumps(args, sort_keys=True))
                for prev in before for name, args in calls]
        await self.db.executemany(
            """
            INSERT INTO tool_sequences (user_id, after_key, tool, arguments)
            VALUES ($1::uuid, $2, $3, $4::jsonb)
            ON CONFLICT (user_id, after_key, tool, arguments)
            DO UPDATE SET seen = tool_sequences.seen + 1, last_seen = now()
            """, rows)

    # -- predictors ----------------------------------------------------------------------------

    def _from_plan(self, state: Mapping[str, Any], planning: bool,
                   ) -> list[tuple[str, dict[str, Any]]]:
        if planning:
            # No plan yet: the task's own words are the step in progress.
            text = next((str(m.content) for m in reversed(state.get("messages", []))
                         if isinstance(m, HumanMessage)), "")
        else:
            plan = state.get("plan") or []
            number = state.get("current_step", 1)
            text = next((s["description"] for s in plan if s["number"] == number), "")
        found: list[tuple[str, dict[str, Any]]] = []
        if (match := _SEARCH.search(text)) and self.toolset.get("search") is not None:
            query = _CLAUSE.split(match.group(1), maxsplit=1)[0]
            query = query.strip().strip(_QUOTES).rstrip(".!?;:").strip(_QUOTES).strip()
            if query:
                found.append(("search", {"query": query}))
        if self.toolset.get("fetch_url") is not None:
            found += [("fetch_url", {"url": url.rstrip(".,;:")}) for url in _URL.findall(text)]
        return found

    def _after(self, tool_name: str, content: str) -> list[tuple[str, dict[str, Any]]]:
        """The calls a tool's result suggests: a search's top links, fetched."""
        if tool_name != "search" or self.toolset.get("fetch_url") is None:
            return []
        urls = list(dict.fromkeys(u.rstrip(".,;:") for u in _URL.findall(content)))
        return [("fetch_url", {"url": url}) for url in urls[:self.links]]

    async def _from_history(self, state: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        keys = self._previous_keys(state)
        if self.db is None or not keys:
            return []
        user = await self._user_id(state)
        if user is None:
            return []
        rows = await self.db.fetch(
            """
            SELECT tool, arguments::text AS arguments, sum(seen) AS seen FROM tool_sequences
            WHERE user_id = $1::uuid AND after_key = ANY($2::text[]) AND seen >= 2
            GROUP BY tool, arguments ORDER BY sum(seen) DESC, max(last_seen) DESC LIMIT $3
            """, user, keys, self.limit)
        return [(r["tool"], json.loads(r["arguments"])) for r in rows]

    def _previous_keys(self, state: Mapping[str, Any], *, skip_last: bool = False) -> list[str]:
        """The keys of the calls the model made in its last turn (with `skip_last`, the turn
        before the newest one)."""
        turns = [m for m in state.get("messages", []) if isinstance(m, AIMessage) and m.tool_calls]
        if skip_last:
            turns = turns[:-1]
        if not turns:
            return []
        keys = []
        for call in turns[-1].tool_calls:
            tool = self.toolset.get(call["name"])
            if tool is not None and (key := call_key(tool, call["args"])) is not None:
                keys.append(key)
        return keys

    async def _user_id(self, state: Mapping[str, Any]) -> str | None:
        if self._user is None and self.db is not None and state.get("task_id"):
            found = await self.db.fetchval("SELECT user_id FROM tasks WHERE id = $1::uuid",
                                           state["task_id"])
            self._user = str(found) if found is not None else None
        return self._user

    # -- safety and metrics ------------------------------------------------------------------

    def _safe(self, tool: Tool, arguments: Mapping[str, Any]) -> bool:
        """Read-only, allowed as it is for this role (no approval, no untrusted-content
        escalation applies to read-only calls), and before the deadline."""
        state = self._state
        if tool.risk != "read_only":
            return False
        deadline = state.get("deadline")
        if deadline is not None and time.time() >= deadline:
            return False
        verdict = self.policy.decide(PolicyCall(
            role=state.get("role", "analyst"), tool=tool.name, risk=tool.risk,
            arguments=dict(arguments), user_email=state.get("user_email", "")))
        return isinstance(verdict, Allow)

    def _count(self, name: str, amount: int = 1) -> None:
        self._counts[name] = self._counts.get(name, 0) + amount

    async def _flush(self) -> None:
        """The turn's counts to Redis in one round trip, where `/metrics` reads them."""
        counts, self._counts = self._counts, {}
        if self.redis is None or not counts:
            return
        pipe = self.redis.pipeline(transaction=False)
        for name, amount in counts.items():
            pipe.hincrby(METRICS, name, amount)
        await pipe.execute()


def _last_results(state: Mapping[str, Any]) -> list[ToolMessage]:
    """The tool messages that answered the model's newest turn."""
    found: list[ToolMessage] = []
    for message in reversed(state.get("messages", [])):
        if isinstance(message, ToolMessage):
            found.append(message)
        elif found:
            break
    return list(reversed(found))

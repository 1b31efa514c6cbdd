"""Run metrics for Prometheus, counted across every worker of a deployment: workers add each
step to counters in Redis (`StepMetrics`, a step recorder), and every API process's
`/metrics` reads them back (`RunMetricsCollector`). One scrape of any API process so shows
the whole deployment: step latency by node, model tokens by model, tool calls by tool and
outcome. Counters start again from zero if Redis loses its data, which Prometheus reads as a
counter reset."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, assert_never

import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from graph.speculation import METRICS
from graph.steps import (
    AgentDelegated,
    AgentReturned,
    AnswerChecked,
    ModelCalled,
    PlanMade,
    RunStopped,
    Step,
    ToolHeld,
    ToolNotRun,
    ToolProposed,
    ToolRan,
)

LATENCY = "cadre:metrics:step_latency"
TOKENS = "cadre:metrics:model_tokens"
TOOL_CALLS = "cadre:metrics:tool_calls"
STOPS = "cadre:metrics:runs_stopped"
SPECULATION = METRICS  # counted by the runs' speculators (graph/speculation.py)
CACHE = "cadre:metrics:cache"  # lookups by cache and outcome (count_cache)
# Upper bounds of the latency histogram's buckets, seconds.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _bucket(seconds: float) -> str:
    for i, bound in enumerate(BUCKETS):
        if seconds <= bound:
            return str(i)
    return "inf"


class StepMetrics:
    """A step recorder that counts each new step (one pipelined Redis round trip for the
    steps a node records together)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def record(self, task_id: str, step: Step) -> bool:
        return (await self.record_all(task_id, [step]))[0]

    async def record_all(self, task_id: str, steps: Sequence[Step]) -> list[bool]:
        pipe = self._redis.pipeline(transaction=False)
        for step in steps:
            _count(pipe, step)
        if len(pipe):
            await pipe.execute()
        return [True] * len(steps)


def _count(pipe: Any, step: Step) -> None:
    match step:
        case ModelCalled() if step.cached:
            pipe.hincrby(CACHE, "model_call|hit", 1)
            pipe.hincrby(TOKENS, f"{step.model}|cached", step.tokens_in + step.tokens_out)
        case ModelCalled():
            _latency(pipe, step.purpose, step.latency_ms)
            pipe.hincrby(TOKENS, f"{step.model}|input", step.tokens_in)
            pipe.hincrby(TOKENS, f"{step.model}|output", step.tokens_out)
        case ToolRan():
            _latency(pipe, "execute", step.latency_ms)
            outcome = "replayed" if step.replayed else "ok" if step.ok else "error"
            pipe.hincrby(TOOL_CALLS, f"{step.tool}|{outcome}", 1)
        case ToolNotRun():
            pipe.hincrby(TOOL_CALLS, f"{step.tool}|{step.why}", 1)
        case ToolHeld():
            pipe.hincrby(TOOL_CALLS, f"{step.tool}|held", 1)
        case RunStopped():
            pipe.hincrby(STOPS, step.stop, 1)
        case PlanMade() | ToolProposed() | AnswerChecked() | AgentDelegated() | AgentReturned():
            pass  # no metric of their own: their model call is counted
        case _:
            assert_never(step)


async def count_cache(redis: aioredis.Redis | None, cache: str, outcome: str) -> None:
    """One lookup of a cache (`task`: the semantic task cache; `plan`: plan reuse) and what
    came of it (hit, miss, near_miss, bypassed)."""
    if redis is not None:
        await redis.hincrby(CACHE, f"{cache}|{outcome}", 1)


def _latency(pipe: Any, node: str, latency_ms: int) -> None:
    pipe.hincrby(LATENCY, f"{node}|{_bucket(latency_ms / 1000)}", 1)
    pipe.hincrby(LATENCY, f"{node}|sum_ms", latency_ms)


class RunMetricsCollector(Collector):
    """Turns the counters in Redis into metric families at scrape time. `snapshot` is read
    (async) just before each scrape; `collect` runs in the registry's thread."""

    def __init__(self) -> None:
        self.snapshot: dict[str, dict[str, int]] = {}

    async def refresh(self, redis: aioredis.Redis) -> None:
        pipe = redis.pipeline(transaction=False)
        keys = (LATENCY, TOKENS, TOOL_CALLS, STOPS, SPECULATION, CACHE)
        for key in keys:
            pipe.hgetall(key)
        values = await pipe.execute()
        self.snapshot = {key: {_text(k): int(v) for k, v in found.items()}
                         for key, found in zip(keys, values, strict=True)}

    def collect(self) -> Iterator[Any]:
        latency = HistogramMetricFamily(
            "cadre_step_latency_seconds", "Time of a run's steps by node: model calls (plan, "
            "act, verify) and tool calls (execute)", labels=["node"])
        by_node: dict[str, dict[str, int]] = {}
        for field, count in self.snapshot.get(LATENCY, {}).items():
            node, _, part = field.partition("|")
            by_node.setdefault(node, {})[part] = count
        for node, parts in sorted(by_node.items()):
            cumulative, buckets = 0, []
            for i, bound in enumerate(BUCKETS):
                cumulative += parts.get(str(i), 0)
                buckets.append((str(bound), cumulative))
            cumulative += parts.get("inf", 0)
            buckets.append(("+Inf", cumulative))
            latency.add_metric([node], buckets, sum_value=parts.get("sum_ms", 0) / 1000)
        yield latency
        tokens = CounterMetricFamily("cadre_model_tokens", "Model tokens by model and "
                                     "direction (input, output, cached: read from the "
                                     "model-call cache, not spent)", labels=["model", "direction"])
        yield self._by_two(tokens, TOKENS)
        calls = CounterMetricFamily(
            "cadre_tool_calls", "Tool calls by tool and outcome: ok, error, replayed (from the "
            "ledger), held (for approval), denied, rejected, unknown_tool, invalid_arguments, "
            "malformed", labels=["tool", "outcome"])
        yield self._by_two(calls, TOOL_CALLS)
        stops = CounterMetricFamily("cadre_runs_stopped", "Runs that ended without an accepted "
                                    "answer, by why", labels=["stop"])
        for stop, count in sorted(self.snapshot.get(STOPS, {}).items()):
            stops.add_metric([stop], count)
        yield stops
        speculative = CounterMetricFamily(
            "cadre_speculative_calls", "Speculative tool calls by where the prediction came "
            "from (stream, plan, results, history) and outcome: started, hit (the model asked "
            "for it), wasted (it did not), refused (not safe to run ahead)",
            labels=["source", "outcome"])
        saved = 0
        for field, count in sorted(self.snapshot.get(SPECULATION, {}).items()):
            if field == "saved_ms":
                saved = count
                continue
            source, _, outcome = field.rpartition("|")
            speculative.add_metric([source, outcome], count)
        yield speculative
        lookups = CounterMetricFamily(
            "cadre_cache_lookups", "Cache lookups by cache (model_call, task, plan) and outcome "
            "(hit, miss, near_miss: similar but below the threshold or not reusable, bypassed: "
            "the task asked to run again)", labels=["cache", "outcome"])
        yield self._by_two(lookups, CACHE)
        yield CounterMetricFamily(
            "cadre_speculation_saved_seconds", "Tool time already done when the model asked "
            "for a call that was speculated", value=saved / 1000)

    def _by_two(self, family: CounterMetricFamily, key: str) -> CounterMetricFamily:
        """`family` with a sample per `first|second` field of the counters at `key`."""
        for field, count in sorted(self.snapshot.get(key, {}).items()):
            first, _, second = field.rpartition("|")
            family.add_metric([first, second], count)
        return family


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

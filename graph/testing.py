"""Test doubles that fail loudly: a scripted chat model and a fake OpenAI-compatible server.

`ScriptedModel` plays queued responses in order, records every call, and raises on a call
it has no response for (`UnexpectedModelCall`) or on a forced tool it was not scripted to
answer; `assert_done()` fails on leftover responses. It never loops its script.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class UnexpectedModelCall(AssertionError):
    """The code under test called the model more often than the test scripted."""


class ScriptMismatch(AssertionError):
    """The scripted response does not fit the call (e.g. a forced tool it does not call)."""


@dataclass(frozen=True, kw_only=True)
class RecordedCall:
    messages: list[BaseMessage]
    tools: list[str]
    tool_choice: str | None
    streamed: bool = False  # asked for as a stream (else answered whole)


class ScriptedModel(BaseChatModel):
    """A chat model that answers from a script. See the module docstring."""

    script: list[AIMessage | Exception] = Field(default_factory=list)
    calls: list[RecordedCall] = Field(default_factory=list)
    model_name: str = "scripted"
    # Seconds before an answer starts (streamed or whole): a model's thinking time.
    latency: float = 0.0
    # Awaited after each streamed chunk with its index, before the next: a test holds the
    # stream mid-message with it.
    between_chunks: Callable[[int], Awaitable[None]] | None = None
    # Awaited when a call arrives, before it is answered: a test that proves two calls run
    # at once answers neither until both have arrived.
    on_call: Callable[[], Awaitable[None]] | None = None
    # Responses for calls whose first user message contains the key, taken before `script`:
    # agents that run at once (a team's workers) get their own answers whatever the order.
    keyed: dict[str, list[AIMessage | Exception]] = Field(default_factory=dict)

    @property
    def _llm_type(self) -> str:
        return "cadre-scripted"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: str | None = None,
                   **kwargs: Any) -> Runnable[Any, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools],
                         tool_choice=tool_choice, **kwargs)

    def add(self, *responses: AIMessage | Exception) -> ScriptedModel:
        self.script.extend(responses)
        return self

    def add_for(self, key: str, *responses: AIMessage | Exception) -> ScriptedModel:
        """Responses for the calls whose first user message contains `key`."""
        self.keyed.setdefault(key, []).extend(responses)
        return self

    def assert_done(self) -> None:
        left = [*self.script, *(r for queue in self.keyed.values() for r in queue)]
        if left:
            raise AssertionError(f"{len(left)} scripted response(s) were never used: "
                                 f"{[_describe(r) for r in left]}")

    def _queue(self, messages: list[BaseMessage]) -> list[AIMessage | Exception]:
        first = next((str(m.content) for m in messages if m.type == "human"), "")
        for key, queue in self.keyed.items():
            if queue and key in first:
                return queue
        return self.script

    def _next(self, messages: list[BaseMessage], kwargs: dict[str, Any], *,
              streamed: bool = False) -> AIMessage:
        tools = [t["function"]["name"] for t in kwargs.get("tools") or []]
        choice = kwargs.get("tool_choice")
        self.calls.append(RecordedCall(messages=list(messages), tools=tools, tool_choice=choice,
                                       streamed=streamed))
        script = self._queue(messages)
        if not script:
            last = str(messages[-1].content)[:200] if messages else ""
            raise UnexpectedModelCall(
                f"model call #{len(self.calls)} has no scripted response "
                f"(tools offered: {tools}, tool_choice: {choice}, last message: {last!r})")
        response = script.pop(0)
        if isinstance(response, Exception):
            raise response
        if choice and choice not in ("auto", "none", "required") and \
                not any(c["name"] == choice for c in response.tool_calls):
            raise ScriptMismatch(f"model call #{len(self.calls)} forces {choice}, but the script "
                                 f"answers {_describe(response)}")
        return response.model_copy(deep=True)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=_whole(self._next(messages, kwargs)))])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        if self.on_call is not None:
            await self.on_call()
        message = _whole(self._next(messages, kwargs))
        if self.latency:
            await asyncio.sleep(self.latency)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        if self.on_call is not None:
            await self.on_call()
        message = self._next(messages, kwargs, streamed=True)
        if self.latency:
            await asyncio.sleep(self.latency)
        for i, chunk in enumerate(_chunks(message)):
            if run_manager:
                # Every chunk, as OpenAI-compatible clients report them (tool-call chunks
                # with empty text).
                await run_manager.on_llm_new_token(str(chunk.content), chunk=ChatGenerationChunk(
                    message=chunk))
            yield ChatGenerationChunk(message=chunk)
            if self.between_chunks is not None:
                await self.between_chunks(i)


def _whole(message: AIMessage) -> AIMessage:
    """An answer asked for whole, with the metadata OpenAI-compatible servers give it."""
    message.response_metadata = {"finish_reason": _finish_reason(message),
                                 "model_name": "scripted", **message.response_metadata}
    return message


def _finish_reason(message: AIMessage) -> str:
    return "tool_calls" if message.tool_calls else "stop"


def _chunks(message: AIMessage) -> Iterator[AIMessageChunk]:
    words = str(message.content).split(" ") if message.content else []
    for i, word in enumerate(words):
        yield AIMessageChunk(content=word if i == 0 else " " + word, id=message.id)
    # One chunk per call, each with its whole arguments; malformed calls stream as their raw
    # text, as a real server sends them.
    calls = [tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
             for i, c in enumerate(message.tool_calls)] + [
        tool_call_chunk(name=c["name"], args=c["args"], id=c["id"],
                        index=len(message.tool_calls) + i)
        for i, c in enumerate(message.invalid_tool_calls)]
    for call in calls:
        yield AIMessageChunk(content="", id=message.id, tool_call_chunks=[call])
    yield AIMessageChunk(
        content="",
        id=message.id,
        usage_metadata=message.usage_metadata,
        # As OpenAI-compatible servers report it on the last chunk.
        response_metadata={"finish_reason": _finish_reason(message), "model_name": "scripted"},
    )


def _describe(response: AIMessage | Exception) -> str:
    if isinstance(response, Exception):
        return f"raise {type(response).__name__}"
    if response.tool_calls:
        return "call " + ", ".join(c["name"] for c in response.tool_calls)
    return f"say {str(response.content)[:40]!r}"


def _usage(tokens: tuple[int, int]) -> UsageMetadata:
    return UsageMetadata(input_tokens=tokens[0], output_tokens=tokens[1],
                         total_tokens=tokens[0] + tokens[1])


def reply(text: str, *, tokens: tuple[int, int] = (20, 10)) -> AIMessage:
    """The model answers in text (and so proposes to finish)."""
    return AIMessage(content=text, usage_metadata=_usage(tokens))


def call(name: str, args: dict[str, Any] | None = None, *, id: str | None = None, text: str = "",
         tokens: tuple[int, int] = (20, 10)) -> AIMessage:
    """The model calls one tool."""
    return calls((name, args or {}, id), text=text, tokens=tokens)


def calls(*specs: tuple[str, dict[str, Any], str | None], text: str = "",
          tokens: tuple[int, int] = (20, 10)) -> AIMessage:
    """The model calls several tools in one turn: `(name, args, id or None)` each."""
    return AIMessage(
        content=text,
        tool_calls=[tool_call(name=n, args=a, id=i or f"call_{uuid.uuid4().hex[:12]}")
                    for n, a, i in specs],
        usage_metadata=_usage(tokens),
    )


def malformed(name: str, raw_args: str, *, id: str | None = None) -> AIMessage:
    """The model emits a tool call whose arguments are not valid JSON."""
    return AIMessage(content="", invalid_tool_calls=[invalid_tool_call(
        name=name, args=raw_args, id=id or f"call_{uuid.uuid4().hex[:12]}",
        error="arguments are not valid JSON")], usage_metadata=_usage((20, 10)))


def plan(*steps: str, tokens: tuple[int, int] = (30, 15)) -> AIMessage:
    """The planner's structured answer."""
    return call("submit_plan", {"steps": list(steps)}, tokens=tokens)


def team_plan(*steps: tuple[str, str, list[int]], tokens: tuple[int, int] = (30, 15)
              ) -> AIMessage:
    """A team manager's plan: `(task, agent, depends_on)` per step."""
    return call("submit_team_plan", {"steps": [
        {"task": task, "agent": agent, "depends_on": needs} for task, agent, needs in steps]},
        tokens=tokens)


def verdict(goal_met: bool, reason: str = "", *, tokens: tuple[int, int] = (30, 5)) -> AIMessage:
    """The verifier's structured answer."""
    return call("submit_verdict", {"goal_met": goal_met, "reason": reason or "checked"},
                tokens=tokens)


# -- serving ASGI apps on loopback ----------------------------------------------------------------


@asynccontextmanager
async def serving(app: Any, *, lifespan: bool = False) -> AsyncIterator[int]:
    """Serve an ASGI app with uvicorn on a free loopback port for the block; yields the port.
    `lifespan` runs the app's start-up and shut-down (Cadre's: the MCP and A2A servers)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on" if lifespan else "off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # the server failed to start: raise why
            await asyncio.sleep(0.01)
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await task


# -- a fake OpenAI-compatible HTTP server -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FakeResponse:
    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # Streamed, the content and each call's arguments in about this many pieces each (a real
    # model sends about one a token); 1: whole in one chunk.
    pieces: int = 1


def completion(content: str | None = None, *,
               tool_calls: Sequence[tuple[str, str] | tuple[str, str, str]] = (),
               tokens: tuple[int, int] = (12, 7)) -> dict[str, Any]:
    """An OpenAI chat completion body; tool call arguments are raw strings (may be malformed).
    A call is `(name, arguments)` with id `call_<index>`, or `(name, arguments, id)`."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": spec[2] if len(spec) == 3 else f"call_{i}", "type": "function",
             "function": {"name": spec[0], "arguments": spec[1]}}
            for i, spec in enumerate(tool_calls)
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "created": 0,
        "model": "fake", "choices": [{"index": 0, "message": message,
                                      "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {"prompt_tokens": tokens[0], "completion_tokens": tokens[1],
                  "total_tokens": sum(tokens)},
    }


class FakeOpenAIServer:
    """Serves queued `FakeResponse`s on loopback; answers 500 and records an error when the
    queue is empty, so an unexpected request fails the test that checks `unexpected`."""

    def __init__(self) -> None:
        self.responses: list[FakeResponse] = []
        self.requests: list[dict[str, Any]] = []
        self.unexpected = 0
        self.default: FakeResponse | None = None
        # Answers computed from the request, for many concurrent conversations at once.
        self.responder: Callable[[dict[str, Any]], FakeResponse] | None = None
        self._stack = AsyncExitStack()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def queue(self, *responses: FakeResponse) -> None:
        self.responses.extend(responses)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        if self.responses:
            response = self.responses.pop(0)
        elif self.responder is not None:
            response = self.responder(body)
        elif self.default is not None:
            response = self.default
        else:
            self.unexpected += 1
            return JSONResponse({"error": {"message": "fake server: unexpected request"}},
                                status_code=500)
        if response.delay:
            await asyncio.sleep(response.delay)
        if response.status != 200 or response.body is None:
            return JSONResponse(response.body or {"error": {"message": f"status {response.status}"}},
                                status_code=response.status, headers=response.headers)
        if body.get("stream"):
            return StreamingResponse(_sse(response.body, response.pieces),
                                     media_type="text/event-stream")
        return JSONResponse(response.body, headers=response.headers)

    async def __aenter__(self) -> FakeOpenAIServer:
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self._stack = AsyncExitStack()
        self.port = await self._stack.enter_async_context(serving(app))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


def _split(text: str, pieces: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, pieces)))
    return [text[i:i + size] for i in range(0, len(text), size)] or [text]


async def _sse(body: dict[str, Any], pieces: int = 1) -> AsyncIterator[bytes]:
    message = body["choices"][0]["message"]
    chunk = {"id": body["id"], "object": "chat.completion.chunk", "created": 0, "model": "fake"}

    def event(delta: dict[str, Any]) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        return f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n".encode()

    if pieces <= 1:
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{**c, "index": i} for i, c in enumerate(message["tool_calls"])]
        yield event(delta)
    else:
        # As a real model streams: the role, then the text and each call's arguments in pieces.
        content = message.get("content")
        yield event({"role": "assistant", "content": "" if content else None})
        for piece in _split(content, pieces) if content else []:
            yield event({"content": piece})
        for i, c in enumerate(message.get("tool_calls") or []):
            function = c["function"]
            yield event({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                                         "function": {"name": function["name"], "arguments": ""}}]})
            for piece in _split(function["arguments"], pieces):
                yield event({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    final = {**chunk, "choices": [{"index": 0, "delta": {},
                                   "finish_reason": body["choices"][0]["finish_reason"]}]}
    yield f"data: {json.dumps(final)}\n\n".encode()
    usage = {**chunk, "choices": [], "usage": body["usage"]}
    yield f"data: {json.dumps(usage)}\n\n".encode()
    yield b"data: [DONE]\n\n"

"""What one model call costs the worker's CPU, streamed or answered whole: Cadre's own
`call_model` with LangChain's `ChatOpenAI`, under a streaming callback handler as in a run,
against an OpenAI-compatible server in a subprocess (its CPU is not counted) that answers a
plan as one tool call, its arguments streamed in N chunks (a real model sends about one a
token) or whole. Prints CPU ms per call for each N, the best of the rounds. Asserts nothing.

    .venv/bin/python bench/model_call.py [--chunks 24,100,300] [--calls 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from langchain_core.messages import HumanMessage
from langchain_core.runnables.config import var_child_runnable_config
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.stack.ports import free_port
from graph.llm import call_model
from graph.run import _AnswerTokens

SERVER = r"""
import json, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

PORT, CHUNKS = int(sys.argv[1]), int(sys.argv[2])
ARGS = json.dumps({"steps": [f"step {i} of the plan, in a few words" for i in range(CHUNKS // 10 + 1)]})
SIZE = max(1, len(ARGS) // CHUNKS)
PIECES = [ARGS[i:i + SIZE] for i in range(0, len(ARGS), SIZE)]
USAGE = {"prompt_tokens": 100, "completion_tokens": CHUNKS, "total_tokens": 100 + CHUNKS}
BASE = {"id": "x", "created": 0, "model": "fake"}


def event(delta, finish=None):
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return ("data: " + json.dumps({**BASE, "object": "chat.completion.chunk", "choices": [choice]})
            + "\n\n").encode()


async def chat(request):
    if not (await request.json()).get("stream"):
        call = {"id": "c1", "type": "function",
                "function": {"name": "submit_plan", "arguments": ARGS}}
        return JSONResponse({**BASE, "object": "chat.completion", "usage": USAGE, "choices": [
            {"index": 0, "finish_reason": "tool_calls",
             "message": {"role": "assistant", "content": None, "tool_calls": [call]}}]})

    async def stream():
        yield event({"role": "assistant", "tool_calls": [{"index": 0, "id": "c1", "type": "function",
                     "function": {"name": "submit_plan", "arguments": ""}}]})
        for piece in PIECES:
            yield event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        yield event({}, "tool_calls")
        yield ("data: " + json.dumps({**BASE, "object": "chat.completion.chunk", "choices": [],
                                       "usage": USAGE}) + "\n\n").encode()
        yield b"data: [DONE]\n\n"
    return StreamingResponse(stream(), media_type="text/event-stream")


uvicorn.run(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]),
            host="127.0.0.1", port=PORT, log_level="warning")
"""

TOOLS = [{"type": "function", "function": {
    "name": "submit_plan", "description": "Submit the plan.",
    "parameters": {"type": "object", "properties": {
        "steps": {"type": "array", "items": {"type": "string"}}}}}}]


async def _ready(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                await client.post(f"{url}/chat/completions", json={"stream": False})
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise RuntimeError("the model server did not start")


async def _measure(url: str, calls: int, rounds: int) -> dict[bool, list[float]]:
    await _ready(url)
    model = ChatOpenAI(model="fake", base_url=url, api_key=SecretStr("not-needed"),
                       stream_usage=True)
    # A run's callbacks, as `graph.run` sets them: a streaming handler.
    var_child_runnable_config.set({"callbacks": [_AnswerTokens(None)]})
    spent: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for stream in (True, False):
            for _ in range(5):  # warm
                await call_model(model, [HumanMessage("plan it")], tools=TOOLS,
                                 tool_choice="submit_plan", stream=stream)
            began = time.process_time()
            for _ in range(calls):
                message = await call_model(model, [HumanMessage("plan it")], tools=TOOLS,
                                           tool_choice="submit_plan", stream=stream)
            spent[stream].append((time.process_time() - began) / calls * 1000)
            assert message.tool_calls and message.tool_calls[0]["args"]["steps"], message
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", default="24,100,300")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("CPU ms per model call in the calling process (a plan as one tool call; the server's "
          "CPU not counted), best of the rounds")
    print(f"{'chunks':>7}{'streamed':>10}{'whole':>8}{'per chunk':>11}")
    for chunks in (int(c) for c in args.chunks.split(",")):
        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(chunks)])
        try:
            spent: dict[Any, list[float]] = asyncio.run(
                _measure(f"http://127.0.0.1:{port}/v1", args.calls, args.rounds))
        finally:
            server.terminate()
            server.wait()
        streamed, whole = min(spent[True]), min(spent[False])
        print(f"{chunks:>7}{streamed:>10.2f}{whole:>8.2f}{(streamed - whole) / chunks:>11.3f}")
    print("a run streams only its act calls (their tokens go to listeners, their tool calls "
          "to speculation); plan and verify calls are answered whole")


if __name__ == "__main__":
    main()

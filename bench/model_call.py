"""What one model call costs the worker's CPU, streamed or answered whole: Cadre's own
`call_model` with LangChain's `ChatOpenAI`, under a streaming callback handler as in a run,
against the fake OpenAI-compatible server (`graph.testing.FakeOpenAIServer`) in a subprocess
(its CPU is not counted) that answers a plan as one tool call, its arguments streamed in N
chunks (a real model sends about one a token) or whole. Prints CPU ms per call for each N,
the best of the rounds. Asserts nothing.

    .venv/bin/python bench/model_call.py [--chunks 24,100,300] [--calls 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables.config import var_child_runnable_config
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graph.llm import call_model
from graph.run import _AnswerTokens
from graph.testing import FakeOpenAIServer, FakeResponse, completion

TOOLS = [{"type": "function", "function": {
    "name": "submit_plan", "description": "Submit the plan.",
    "parameters": {"type": "object", "properties": {
        "steps": {"type": "array", "items": {"type": "string"}}}}}}]


async def _serve_model(chunks: int) -> None:
    """`--serve-model`: the fake model in this subprocess (so its CPU is apart); prints its
    port, serves until stdin closes."""
    steps = json.dumps({"steps": [f"step {i} of the plan, in a few words"
                                  for i in range(chunks // 10 + 1)]})
    async with FakeOpenAIServer() as server:
        server.default = FakeResponse(body=completion(tool_calls=[("submit_plan", steps)]),
                                      pieces=chunks)
        print(server.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _measure(url: str, calls: int, rounds: int) -> dict[bool, list[float]]:
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
    parser.add_argument("--serve-model", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_model is not None:
        asyncio.run(_serve_model(args.serve_model))
        return
    print("CPU ms per model call in the calling process (a plan as one tool call; the server's "
          "CPU not counted), best of the rounds")
    print(f"{'chunks':>7}{'streamed':>10}{'whole':>8}{'per chunk':>11}")
    for chunks in (int(c) for c in args.chunks.split(",")):
        with subprocess.Popen([sys.executable, __file__, "--serve-model", str(chunks)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as server:
            assert server.stdin is not None and server.stdout is not None
            port = int(server.stdout.readline())
            spent: dict[Any, list[float]] = asyncio.run(
                _measure(f"http://127.0.0.1:{port}/v1", args.calls, args.rounds))
            server.stdin.close()  # the server ends
        streamed, whole = min(spent[True]), min(spent[False])
        print(f"{chunks:>7}{streamed:>10.2f}{whole:>8.2f}{(streamed - whole) / chunks:>11.3f}")
    print("a run streams only its answer's calls (their tokens go to listeners, their tool "
          "calls to speculation); plans, verdicts and a team's workers are answered whole")


if __name__ == "__main__":
    main()

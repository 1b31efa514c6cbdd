"""The model factory: `ChatOpenAI` for any OpenAI-compatible endpoint, and one call helper
that turns transport failures (after the client's retries) into `ModelUnavailable`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from graph.errors import ModelUnavailable


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Where the model is and how patiently to talk to it."""

    model: str
    base_url: str | None = None
    api_key: str | None = None
    timeout: float = 120.0
    # The OpenAI client retries 408/409/429/5xx and connection errors with exponential
    # backoff and jitter, honouring Retry-After; this is its retry budget.
    max_retries: int = 4
    temperature: float = 0.0
    max_tokens: int | None = 1024
    offline: bool = False

    def describe(self) -> str:
        where = self.base_url or "https://api.openai.com/v1"
        label = " (tiny offline model: expect weak answers; set OPENAI_API_KEY or OPENAI_BASE_URL)" \
            if self.offline else ""
        return f"{self.model} at {where}{label}"


def make_chat_model(config: ModelConfig) -> ChatOpenAI:
    """A chat model for `config`, with timeouts, retries, tool calling and token streaming.

    Building it creates HTTP clients (reading CA certificates from disk): do it at start-up
    or in a thread, not on a running event loop."""
    if not config.api_key and not config.base_url:
        raise ValueError("a model needs an API key or a base URL")
    return ChatOpenAI(
        model=config.model,
        base_url=config.base_url,
        # Local OpenAI-compatible servers accept any key; the client insists on one.
        api_key=SecretStr(config.api_key or "not-needed"),
        timeout=config.timeout,
        max_retries=config.max_retries,
        temperature=config.temperature,
        max_completion_tokens=config.max_tokens,
        # llama.cpp's server reads only the older `max_tokens`: without it the offline model
        # generates until its context is full.
        extra_body={"max_tokens": config.max_tokens} if config.offline else None,
        stream_usage=True,
    )


async def call_model(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    *,
    tools: Sequence[dict[str, Any]] = (),
    tool_choice: str | None = None,
    stream: bool = True,
) -> AIMessage:
    """One model call, with failures mapped: streamed (so token events reach listeners), or
    with `stream=False` answered whole, for a call whose tokens nobody reads (parsing and
    passing on each chunk is most of a call's cost in the worker; docs/performance.md)."""
    runnable: Any = model
    if tools:
        runnable = model.bind_tools(list(tools), tool_choice=tool_choice)
    try:
        message = await runnable.ainvoke(list(messages), **({} if stream else {"stream": False}))
    except openai.APIStatusError as exc:
        raise ModelUnavailable(
            f"the model endpoint answered {exc.status_code} after retries: {_short(exc.message)}"
        ) from exc
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise ModelUnavailable(f"the model endpoint could not be reached after retries: "
                               f"{_short(str(exc))}") from exc
    except openai.APIError as exc:
        raise ModelUnavailable(f"the model endpoint failed: {_short(str(exc))}") from exc
    if not isinstance(message, AIMessage):
        raise ModelUnavailable(f"the model returned {type(message).__name__}, not a message")
    return message


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."

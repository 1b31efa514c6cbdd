"""`search` over the web: SearxNG, Tavily and Brave, each played by a real HTTP server on loopback
that speaks the provider's API shape and records what it was asked."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from graph.testing import serving
from tools import ToolContext, ToolOutcome, Toolset
from tools.builtin import search
from tools.builtin.web_search import WebSearchConfig

CTX = ToolContext(task_id="t", tool_call_id="c")


@dataclass(frozen=True, kw_only=True)
class Received:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Provider:
    """One loopback server for all three providers' paths; answers with `answer` (set per test)."""

    port: int = 0
    answer: Response = field(default_factory=lambda: JSONResponse({"results": []}))
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        self.received.append(Received(
            method=request.method, path=request.url.path, params=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=json.loads(raw) if raw else None))
        if self.delay:
            # Cut short at teardown: the server waits for open requests before it stops.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), self.delay)
        return self.answer


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    fake = Provider()
    routes = [Route(path, fake.handle, methods=["GET", "POST"])
              for path in ("/search", "/res/v1/web/search")]
    async with AsyncExitStack() as stack:
        fake.port = await stack.enter_async_context(serving(Starlette(routes=routes)))
        stack.callback(fake.released.set)
        yield fake


def _config(provider: Provider, name: str, **overrides: Any) -> WebSearchConfig:
    config = WebSearchConfig(provider=name, searxng_url=provider.url,  # type: ignore[arg-type]
                             tavily_api_key="tvly-secret", tavily_url=provider.url,
                             brave_api_key="brave-secret", brave_url=provider.url, timeout=5)
    return replace(config, **overrides)


async def _search(config: WebSearchConfig | None, arguments: dict[str, Any]) -> ToolOutcome:
    toolset = Toolset()
    search.register(toolset, web=config)
    tool = toolset.get("search")
    assert tool is not None and tool.risk == "read_only"
    return await tool.invoke(CTX, arguments)


async def _hits(config: WebSearchConfig, arguments: dict[str, Any]) -> dict[str, Any]:
    outcome = await _search(config, arguments)
    assert outcome.ok and outcome.untrusted, outcome
    return json.loads(outcome.content)  # type: ignore[no-any-return]


async def test_searxng_asks_for_json_and_maps_hits(provider: Provider) -> None:
    provider.answer = JSONResponse({"query": "q", "results": [
        {"title": "Espresso", "url": "https://example.com/espresso", "content": "A  coffee\n drink."},
        {"title": "no url, left out"},
        {"title": "", "url": "https://example.com/untitled", "content": "x"},
        {"title": "Third", "url": "https://example.com/3", "content": "y"},
    ]})
    found = await _hits(_config(provider, "searxng", searxng_url=provider.url + "/"),
                        {"query": "what is espresso", "limit": 2})
    [asked] = provider.received
    assert (asked.method, asked.path) == ("GET", "/search")
    assert asked.params == {"q": "what is espresso", "format": "json"}
    assert found == {"provider": "searxng", "results": [
        {"title": "Espresso", "source": "https://example.com/espresso", "snippet": "A coffee drink."},
        {"title": "https://example.com/untitled", "source": "https://example.com/untitled",
         "snippet": "x"},
    ]}


async def test_tavily_posts_the_query_with_a_bearer_key(provider: Provider) -> None:
    provider.answer = JSONResponse({"query": "q", "answer": None, "response_time": 0.4, "results": [
        {"title": "Tavily docs", "url": "https://docs.tavily.com", "content": "Search API.",
         "score": 0.9, "raw_content": None},
    ]})
    found = await _hits(_config(provider, "tavily"), {"query": "tavily api", "limit": 3})
    [asked] = provider.received
    assert (asked.method, asked.path) == ("POST", "/search")
    assert asked.headers["authorization"] == "Bearer tvly-secret"
    assert asked.body["query"] == "tavily api" and asked.body["max_results"] == 3
    assert "api_key" not in asked.body, "the key travels in the header only"
    assert found["provider"] == "tavily"
    assert found["results"] == [{"title": "Tavily docs", "source": "https://docs.tavily.com",
                                 "snippet": "Search API."}]


async def test_brave_sends_the_subscription_token_and_count(provider: Provider) -> None:
    provider.answer = JSONResponse({"type": "search", "web": {"type": "search", "results": [
        {"title": "Brave Search API", "url": "https://brave.com/search/api/",
         "description": "The <strong>Brave</strong> Search API.", "age": "2 days ago"},
    ]}})
    found = await _hits(_config(provider, "brave"), {"query": "brave api", "limit": 50})
    [asked] = provider.received
    assert (asked.method, asked.path) == ("GET", "/res/v1/web/search")
    assert asked.params == {"q": "brave api", "count": "20"}, "the limit is capped at 20"
    assert asked.headers["x-subscription-token"] == "brave-secret"
    assert "authorization" not in asked.headers
    assert found["results"] == [{"title": "Brave Search API", "source": "https://brave.com/search/api/",
                                 "snippet": "The <strong>Brave</strong> Search API."}]


async def test_brave_without_a_web_section_found_nothing(provider: Provider) -> None:
    provider.answer = JSONResponse({"type": "search", "query": {"original": "zebra unicorn"}})
    found = await _hits(_config(provider, "brave"), {"query": "zebra unicorn"})
    assert found["results"] == []


@pytest.mark.parametrize(("name", "status", "message"), [
    ("tavily", 401, "Tavily rejected the request (HTTP 401): check TAVILY_API_KEY"),
    ("brave", 401, "Brave Search rejected the request (HTTP 401): check BRAVE_API_KEY"),
    ("brave", 403, "Brave Search rejected the request (HTTP 403): check BRAVE_API_KEY"),
    ("searxng", 403, "SearxNG refused a JSON search (HTTP 403): enable `json` in search.formats "
                     "of its settings.yml"),
])
async def test_a_refused_request_names_the_setting_to_fix(provider: Provider, name: str,
                                                          status: int, message: str) -> None:
    provider.answer = JSONResponse({"detail": {"error": "Unauthorized"}}, status_code=status)
    outcome = await _search(_config(provider, name), {"query": "q"})
    assert outcome == ToolOutcome(ok=False, content=message)
    assert "secret" not in outcome.content


async def test_rate_limit_says_when_to_retry(provider: Provider) -> None:
    provider.answer = JSONResponse({"error": "too many"}, status_code=429,
                                   headers={"Retry-After": "7"})
    outcome = await _search(_config(provider, "brave"), {"query": "q"})
    assert outcome == ToolOutcome(ok=False, content="Brave Search rate limit reached (HTTP 429); "
                                                    "retry after 7s")
    provider.answer = JSONResponse({"error": "too many"}, status_code=429)
    outcome = await _search(_config(provider, "tavily"), {"query": "q"})
    assert outcome.content == "Tavily rate limit reached (HTTP 429); wait before searching again"


async def test_a_server_error_is_one_line_with_the_detail(provider: Provider) -> None:
    provider.answer = PlainTextResponse("upstream\nengines failed", status_code=502)
    outcome = await _search(_config(provider, "searxng"), {"query": "q"})
    assert outcome == ToolOutcome(ok=False, content="SearxNG answered HTTP 502: upstream engines failed")


async def test_a_slow_provider_times_out_with_a_clear_message(provider: Provider) -> None:
    provider.delay = 5.0
    outcome = await _search(_config(provider, "tavily", timeout=0.3), {"query": "q"})
    assert outcome == ToolOutcome(ok=False, content="Tavily did not answer within 0.3s; "
                                                    "try again or a simpler query")


async def test_malformed_answers_are_reported(provider: Provider) -> None:
    provider.answer = PlainTextResponse("<html>blocked</html>", media_type="text/html")
    outcome = await _search(_config(provider, "searxng"), {"query": "q"})
    assert outcome == ToolOutcome(ok=False, content="SearxNG answered with malformed JSON "
                                                    "(text/html; charset=utf-8)")
    provider.answer = JSONResponse({"results": "none"})
    outcome = await _search(_config(provider, "tavily"), {"query": "q"})
    assert outcome == ToolOutcome(ok=False, content="Tavily answered JSON without a list of results")
    provider.answer = JSONResponse(["not", "an", "object"])
    outcome = await _search(_config(provider, "brave"), {"query": "q"})
    assert outcome == ToolOutcome(ok=False, content="Brave Search answered JSON that is not a "
                                                    "search result")


async def test_an_unreachable_provider_is_reported_without_credentials(provider: Provider) -> None:
    async with serving(Starlette()) as port:
        pass  # the port is free again once the server has stopped
    config = _config(provider, "searxng", searxng_url=f"http://user:pw@127.0.0.1:{port}")
    outcome = await _search(config, {"query": "q"})
    assert not outcome.ok
    assert outcome.content.startswith(f"could not reach SearxNG at http://127.0.0.1:{port}/search")
    assert "pw" not in outcome.content


async def test_an_empty_query_asks_for_words_without_a_request(provider: Provider) -> None:
    outcome = await _search(_config(provider, "brave"), {"query": "   "})
    assert outcome == ToolOutcome(ok=False, content="give a few words to search for")
    assert provider.received == []


async def test_the_description_says_what_is_searched(provider: Provider) -> None:
    def description(web: WebSearchConfig | None) -> str:
        toolset = Toolset()
        search.register(toolset, web=web)
        tool = toolset.get("search")
        assert tool is not None
        return tool.description

    assert description(None).startswith("Search the knowledge base")
    assert description(WebSearchConfig()) == description(None), "provider kb is the default"
    assert description(_config(provider, "brave")).startswith("Search the web")


@pytest.mark.parametrize(("settings", "message"), [
    ({"provider": "tavily"}, "CADRE_SEARCH_PROVIDER=tavily needs TAVILY_API_KEY"),
    ({"provider": "brave", "brave_api_key": ""}, "CADRE_SEARCH_PROVIDER=brave needs BRAVE_API_KEY"),
    ({"provider": "searxng"}, "CADRE_SEARCH_PROVIDER=searxng needs SEARXNG_URL"),
    ({"provider": "bing"}, "CADRE_SEARCH_PROVIDER must be one of kb, searxng, tavily, brave"),
    ({"provider": "searxng", "searxng_url": "localhost:8888"}, "SEARXNG_URL must be an http"),
    ({"provider": "brave", "brave_api_key": "k", "timeout": 0}, "CADRE_SEARCH_TIMEOUT must be"),
])
async def test_config_names_the_missing_setting(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        WebSearchConfig(**settings)


async def test_api_keys_stay_out_of_the_config_repr() -> None:
    config = WebSearchConfig(provider="tavily", tavily_api_key="tvly-secret")
    assert "tvly-secret" not in repr(config)


def test_settings_choose_the_provider_and_name_what_is_missing() -> None:
    from app.errors import ConfigError
    from app.settings import Settings
    from app.tooling import builtin_tools

    kb = builtin_tools(Settings.of()).get("search")
    assert kb is not None and "knowledge base" in kb.description
    web = builtin_tools(Settings.of(search_provider="searxng",
                                    searxng_url="http://search.internal:8888")).get("search")
    assert web is not None and web.description.startswith("Search the web")
    with pytest.raises(ConfigError, match="CADRE_SEARCH_PROVIDER=tavily needs TAVILY_API_KEY"):
        builtin_tools(Settings.of(search_provider="tavily"))

"""Web search providers for the `search` tool — SearxNG, Tavily and Brave — chosen by configuration.

Each answers a query with hits shaped like the knowledge base's (title, source = the page's URL,
snippet). A failure becomes a one-line `ToolError` the model reads; a rejected key names the
setting a deployer must fix.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, assert_never, get_args

import httpx

from tools.contract import ToolError

Provider = Literal["kb", "searxng", "tavily", "brave"]
PROVIDERS: tuple[Provider, ...] = get_args(Provider)
WebProvider = Literal["searxng", "tavily", "brave"]

TAVILY_URL = "https://api.tavily.com"
BRAVE_URL = "https://api.search.brave.com"
# Both Tavily (`max_results`) and Brave (`count`) accept at most 20.
MAX_RESULTS = 20
# Keeps MAX_RESULTS hits well inside the tool's output cap, so the JSON is never cut short.
SNIPPET_CHARS = 400

_LABELS: dict[WebProvider, str] = {"searxng": "SearxNG", "tavily": "Tavily", "brave": "Brave Search"}


class Hit(TypedDict):
    title: str
    source: str
    snippet: str


@dataclass(frozen=True, kw_only=True)
class WebSearchConfig:
    """Which search the `search` tool runs: `kb`, the local knowledge base (the offline
    default), or a web provider with what it needs. The URLs are bases, overridable for a
    self-hosted instance or a proxy. Raises ValueError naming the setting that is missing."""

    provider: Provider = "kb"
    searxng_url: str | None = None
    tavily_api_key: str | None = field(default=None, repr=False)
    tavily_url: str = TAVILY_URL
    brave_api_key: str | None = field(default=None, repr=False)
    brave_url: str = BRAVE_URL
    timeout: float = 10.0

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(problem)

    def _problem(self) -> str | None:
        if self.provider not in PROVIDERS:
            return f"CADRE_SEARCH_PROVIDER must be one of {', '.join(PROVIDERS)}, not {self.provider!r}"
        if self.timeout <= 0:
            return f"CADRE_SEARCH_TIMEOUT must be a positive number of seconds, not {self.timeout:g}"
        if self.provider == "searxng" and not self.searxng_url:
            return "CADRE_SEARCH_PROVIDER=searxng needs SEARXNG_URL (e.g. http://localhost:8888)"
        if self.provider == "tavily" and not self.tavily_api_key:
            return "CADRE_SEARCH_PROVIDER=tavily needs TAVILY_API_KEY"
        if self.provider == "brave" and not self.brave_api_key:
            return "CADRE_SEARCH_PROVIDER=brave needs BRAVE_API_KEY"
        for setting, url in (("SEARXNG_URL", self.searxng_url), ("TAVILY_URL", self.tavily_url),
                             ("BRAVE_URL", self.brave_url)):
            if url is not None and not url.startswith(("http://", "https://")):
                return f"{setting} must be an http:// or https:// URL, not {url!r}"
        return None


async def web_search(config: WebSearchConfig, query: str, *, limit: int = 5) -> list[Hit]:
    """Up to `limit` (at most MAX_RESULTS) hits for `query` from the configured web provider,
    best first. Raises ToolError with a one-line reason when the provider fails."""
    limit = max(1, min(limit, MAX_RESULTS))
    match config.provider:
        case "searxng":
            return await _searxng(config, query, limit)
        case "tavily":
            return await _tavily(config, query, limit)
        case "brave":
            return await _brave(config, query, limit)
        case "kb":
            raise ValueError("the knowledge base is not a web provider")
        case _:
            assert_never(config.provider)


async def _searxng(config: WebSearchConfig, query: str, limit: int) -> list[Hit]:
    assert config.searxng_url is not None
    body = await _request("searxng", config, "GET", _join(config.searxng_url, "/search"),
                          params={"q": query, "format": "json"})
    return _hits("searxng", _object("searxng", body).get("results"), snippet="content",
                 limit=limit)


async def _tavily(config: WebSearchConfig, query: str, limit: int) -> list[Hit]:
    body = await _request("tavily", config, "POST", _join(config.tavily_url, "/search"),
                          json={"query": query, "max_results": limit, "search_depth": "basic"},
                          headers={"Authorization": f"Bearer {config.tavily_api_key}"})
    return _hits("tavily", _object("tavily", body).get("results"), snippet="content",
                 limit=limit)


async def _brave(config: WebSearchConfig, query: str, limit: int) -> list[Hit]:
    assert config.brave_api_key is not None
    body = await _request("brave", config, "GET", _join(config.brave_url, "/res/v1/web/search"),
                          params={"q": query, "count": limit},
                          headers={"X-Subscription-Token": config.brave_api_key})
    # Brave leaves out the `web` section when nothing matched.
    web = _object("brave", _object("brave", body).get("web", {}))
    return _hits("brave", web.get("results", []), snippet="description", limit=limit)


async def _request(provider: WebProvider, config: WebSearchConfig, method: str, url: str,
                   **kwargs: Any) -> Any:
    label = _LABELS[provider]
    # Building a client loads the CA bundle from disk: do it off the event loop. Only SearxNG
    # follows redirects, as it carries no key that a redirect could hand to another host.
    client = await asyncio.to_thread(httpx.AsyncClient, timeout=config.timeout,
                                     follow_redirects=provider == "searxng",
                                     headers={"Accept": "application/json"})
    try:
        async with client:
            response = await client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise ToolError(f"{label} did not answer within {config.timeout:g}s; "
                        "try again or a simpler query") from None
    except httpx.HTTPError as exc:
        raise ToolError(f"could not reach {label} at {_where(url)}: "
                        f"{_one_line(str(exc)) or type(exc).__name__}") from None
    if response.status_code != 200:
        raise ToolError(_status_message(provider, response))
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ToolError(f"{label} answered with malformed JSON "
                        f"({response.headers.get('content-type', 'no content type')})") from None


def _status_message(provider: WebProvider, response: httpx.Response) -> str:
    label, status = _LABELS[provider], response.status_code
    if status == 429:
        wait = response.headers.get("retry-after")
        return (f"{label} rate limit reached (HTTP 429); "
                + (f"retry after {wait}s" if wait else "wait before searching again"))
    if provider == "searxng" and status == 403:
        return ("SearxNG refused a JSON search (HTTP 403): enable `json` in search.formats "
                "of its settings.yml")
    if status in (401, 403):
        setting = "SEARXNG_URL" if provider == "searxng" else f"{provider.upper()}_API_KEY"
        return f"{label} rejected the request (HTTP {status}): check {setting}"
    detail = _one_line(response.text)[:200]
    return f"{label} answered HTTP {status}" + (f": {detail}" if detail else "")


def _object(provider: WebProvider, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ToolError(f"{_LABELS[provider]} answered JSON that is not a search result")
    return value


def _hits(provider: WebProvider, items: Any, *, snippet: str, limit: int) -> list[Hit]:
    if not isinstance(items, list):
        raise ToolError(f"{_LABELS[provider]} answered JSON without a list of results")
    hits: list[Hit] = []
    for item in items:
        # A hit without a URL cannot be cited or fetched: leave it out.
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            continue
        text = _one_line(_text(item.get(snippet)))
        if len(text) > SNIPPET_CHARS:
            text = text[:SNIPPET_CHARS - 1] + "…"
        hits.append(Hit(title=_one_line(_text(item.get("title"))) or item["url"],
                        source=item["url"], snippet=text))
    return hits[:limit]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _join(base: str, path: str) -> str:
    return base.rstrip("/") + path


def _where(url: str) -> str:
    """The URL without credentials or query, safe to show the model."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(userinfo=b"", query=None))

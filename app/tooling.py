"""What the built-in tools need, opened from the settings for a worker's lifetime."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import boto3
from botocore.config import Config
from pydantic import SecretStr

from app.errors import ConfigError, StackError, first_line
from app.settings import Settings, redact_url
from app.stack.embeddings import MODEL_NAME as EMBEDDED_MODEL
from graph.agents import Team
from graph.llm import ModelConfig, make_chat_model
from guardrails import FilePolicy, PolicyError, load_policy
from guardrails.agents import AgentProfiles, AgentsError, load_agents
from guardrails.screening import ClassifierScreen, RuleScreen, Screen
from tools.artifacts import Artifacts, ArtifactStore, DiskStore, S3Store
from tools.builtin import FetchPolicy, SmtpMailer, SqlAccess, ToolDeps, WebSearchConfig, builtin_toolset
from tools.contract import Toolset
from tools.embeddings import Embedder
from tools.mcp import load_mcp_servers
from tools.registry import include, load_toolset
from tools.sandbox.bwrap import BwrapSandbox
from tools.sandbox.e2b import E2BSandbox

log = logging.getLogger("cadre.tools")


@asynccontextmanager
async def open_tool_deps(settings: Settings, *, db: asyncpg.Pool | None = None
                         ) -> AsyncIterator[ToolDeps]:
    sql_pool = None
    if settings.agent_sql_url:
        try:
            sql_pool = await asyncpg.create_pool(settings.agent_sql_url, min_size=0, max_size=5,
                                                 timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise StackError(f"cannot connect to AGENT_SQL_URL={redact_url(settings.agent_sql_url)}: "
                             f"{first_line(exc)}") from None
    sandbox: BwrapSandbox | E2BSandbox | None = None
    root = await asyncio.to_thread(lambda: settings.home.resolve() / "sandbox")
    if settings.e2b_api_key:
        sandbox = E2BSandbox(root=root, api_key=settings.e2b_api_key.get_secret_value())
    elif await asyncio.to_thread(sandbox_available):
        sandbox = BwrapSandbox(root=root)
    async with open_embedder(settings) as embedder:
        try:
            yield ToolDeps(sql=SqlAccess(pool=sql_pool) if sql_pool else None, sandbox=sandbox,
                           embedder=embedder, memory=settings.memory, db=db,
                           artifacts=Artifacts(db, artifact_store(settings)) if db else None,
                           mail=SmtpMailer(url=settings.smtp_url, sender=settings.mail_from)
                           if settings.smtp_url else None)
        finally:
            if sandbox is not None:
                await sandbox.aclose()
            if sql_pool is not None:
                await sql_pool.close()


@asynccontextmanager
async def open_embedder(settings: Settings) -> AsyncIterator[Embedder | None]:
    """The configured embeddings client (`embedder_for`), connected (off the event loop: it
    reads CA certificates) and closed on exit; None when none is configured."""
    embedder = embedder_for(settings)
    if embedder is None:
        yield None
        return
    await asyncio.to_thread(embedder.connect)
    try:
        yield embedder
    finally:
        await embedder.aclose()


def embedder_for(settings: Settings) -> Embedder | None:
    """The configured embeddings endpoint: `CADRE_EMBEDDING_MODEL` (at
    `CADRE_EMBEDDING_BASE_URL`, else `OPENAI_BASE_URL`, with `OPENAI_API_KEY`), else the
    embedded model `cadre up` serves; None when neither is there."""
    if settings.embedding_model:
        return Embedder(model=settings.embedding_model,
                        base_url=settings.embedding_base_url or settings.openai_base_url,
                        api_key=_secret(settings.openai_api_key),
                        input_type=settings.embedding_input_type, ask_dimensions=True)
    if settings.embedding_base_url:
        return Embedder(model=EMBEDDED_MODEL, base_url=settings.embedding_base_url,
                        input_type=True, ask_dimensions=False)
    return None


def worker_screen(settings: Settings) -> Screen:
    """How untrusted tool output is screened: the configured classifier, else the rules."""
    if settings.injection_classifier_url:
        return ClassifierScreen(settings.injection_classifier_url)
    return RuleScreen()


def web_search_config(settings: Settings) -> WebSearchConfig | None:
    """The web search provider for `search`, or None for the local knowledge base."""
    if settings.search_provider == "kb":
        return None
    try:
        return WebSearchConfig(
            provider=settings.search_provider, searxng_url=settings.searxng_url,
            tavily_api_key=_secret(settings.tavily_api_key), tavily_url=settings.tavily_url,
            brave_api_key=_secret(settings.brave_api_key), brave_url=settings.brave_url,
            timeout=settings.search_timeout)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def builtin_tools(settings: Settings) -> Toolset:
    """The built-in tools this configuration can run (reads PATH and files: call off the loop)."""
    return builtin_toolset(with_sql=bool(settings.agent_sql_url),
                           with_python=sandbox_available(settings),
                           with_email=bool(settings.smtp_url),
                           # Memory needs embeddings; CADRE_MEMORY=false offers neither tool.
                           with_memory=settings.memory and embedder_for(settings) is not None,
                           web=web_search_config(settings), fetch_policy=fetch_policy(settings))


def known_tools(toolset: Toolset) -> set[str]:
    """Every tool Cadre knows: those this worker offers and the built-in ones it could (a
    file naming a tool this configuration lacks is still valid elsewhere)."""
    every_builtin = builtin_toolset(with_sql=True, with_python=True, with_email=True,
                                    with_memory=True, fetch_policy=FetchPolicy())
    return {t.name for t in toolset} | {t.name for t in every_builtin}


def worker_policy(settings: Settings, toolset: Toolset) -> FilePolicy:
    """The policy file (CADRE_POLICY_FILE, else the bundled default), checked against every
    tool Cadre knows."""
    try:
        return load_policy(settings.policy_file, known_tools=known_tools(toolset))
    except PolicyError as exc:
        raise ConfigError(f"{exc} (CADRE_POLICY_FILE)") from None


def worker_agents(settings: Settings, toolset: Toolset) -> AgentProfiles:
    """The agent profiles (CADRE_AGENTS_FILE, else the bundled ones), checked against every
    tool Cadre knows."""
    try:
        return load_agents(settings.agents_file, known_tools=known_tools(toolset))
    except AgentsError as exc:
        raise ConfigError(f"{exc} (CADRE_AGENTS_FILE)") from None


def worker_team(agents: AgentProfiles, config: ModelConfig | None) -> Team:
    """The team a worker's manager agents delegate to: the profiles, and a client for each
    profile that names its own model, on the deployment's endpoint (`config`). Without a
    configured endpoint (a worker given its model, as in tests) every agent uses that one."""
    models = {p.name: make_chat_model(dataclasses.replace(config, model=p.model))
              for p in agents if p.model and config is not None and p.model != config.model}
    return Team(profiles=agents, models=models)


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        max_bytes=settings.fetch_max_bytes, timeout=settings.fetch_timeout,
        max_redirects=settings.fetch_max_redirects, max_output_chars=settings.fetch_max_chars,
        allow_private=FetchPolicy.parse_hosts(settings.fetch_allow_private),
        ca_file=str(settings.fetch_ca_file) if settings.fetch_ca_file else None)


def local_toolset(settings: Settings) -> Toolset:
    """A worker's tools but those of MCP servers (listing them means connecting): what the
    A2A card shows and replays run against. Reads PATH and entry points: call off the loop."""
    return load_toolset(settings.tool_plugins, builtin=builtin_tools(settings))


async def worker_toolset(settings: Settings) -> Toolset:
    """Every tool a worker offers: the configured built-in ones, `cadre.tools` plug-ins,
    CADRE_TOOLS, and the tools of the MCP servers in CADRE_MCP_CONFIG. An MCP server that
    cannot be reached is logged and left out (the worker serves the others' tools); a
    malformed config file is a ConfigError."""
    # Entry-point discovery scans site-packages, finding bwrap stats PATH: off the loop.
    toolset = await asyncio.to_thread(local_toolset, settings)
    if settings.mcp_config is not None:
        try:
            servers, failures = await load_mcp_servers(settings.mcp_config)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for failure in failures:
            log.error("MCP server left out (its tools are unavailable until the worker "
                      "restarts): %s", failure)
        include(toolset, servers, source=f"CADRE_MCP_CONFIG={settings.mcp_config}")
    return toolset


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value else None


def artifact_store(settings: Settings) -> ArtifactStore:
    """S3 when CADRE_ARTIFACTS_BUCKET is set, else CADRE_HOME/artifacts on local disk."""
    if settings.artifacts_bucket:
        return S3Store(bucket=settings.artifacts_bucket, client_factory=lambda: s3_client(settings))
    return DiskStore(root=settings.home / "artifacts")


def s3_client(settings: Settings) -> Any:
    secret = settings.aws_secret_access_key
    return boto3.session.Session().client(
        "s3", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url_s3,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(connect_timeout=5, read_timeout=60, retries={"mode": "standard"}))


def sandbox_available(settings: Settings | None = None) -> bool:
    """A code sandbox can run here: E2B is configured, or bubblewrap is installed."""
    return bool(settings and settings.e2b_api_key) or shutil.which("bwrap") is not None

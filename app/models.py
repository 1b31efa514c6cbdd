"""Which model Cadre talks to, from the settings."""

from __future__ import annotations

from app.errors import ConfigError
from app.settings import Settings
from graph.llm import ModelConfig

DEFAULT_MODEL = "gpt-4.1-mini"
OFFLINE_MAX_TOKENS = 256


def model_config(settings: Settings) -> ModelConfig:
    """The configured OpenAI-compatible endpoint, or a `ConfigError` saying how to set one."""
    if not settings.openai_api_key and not settings.openai_base_url:
        raise ConfigError(
            "no model is configured: set OPENAI_API_KEY (and optionally CADRE_MODEL), or "
            "OPENAI_BASE_URL for any OpenAI-compatible server, or run `cadre up`, which "
            "starts the offline model"
        )
    # The tiny offline model rambles until the limit rather than stopping: on two CPU cores
    # 1024 tokens take minutes, and nothing useful comes after the first few lines.
    limit = {"max_tokens": OFFLINE_MAX_TOKENS} if settings.offline_model else {}
    return ModelConfig(
        model=settings.model or DEFAULT_MODEL,
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        timeout=settings.model_timeout,
        max_retries=settings.model_max_retries,
        offline=settings.offline_model,
        **limit,
    )

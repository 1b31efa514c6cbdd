"""Which model Cadre uses, and how plainly it says so."""

from __future__ import annotations

import pytest

from app.errors import ConfigError
from app.health import check_model
from app.models import model_config
from app.settings import Settings


def test_no_model_configured_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CADRE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"set OPENAI_API_KEY .* or OPENAI_BASE_URL"):
        model_config(Settings.of(home="/nonexistent"))


def test_openai_compatible_endpoint() -> None:
    config = model_config(Settings.of(openai_base_url="http://llm.internal/v1", model="qwen",
                                   model_timeout=30, model_max_retries=2))
    assert (config.base_url, config.model, config.timeout, config.max_retries, config.offline) == \
        ("http://llm.internal/v1", "qwen", 30, 2, False)
    assert config.describe() == "qwen at http://llm.internal/v1"


def test_offline_model_is_labelled_everywhere() -> None:
    settings = Settings.of(openai_base_url="http://127.0.0.1:8011/v1", model="smollm2-135m-instruct",
                        offline_model=True)
    assert "tiny offline model" in model_config(settings).describe()
    assert model_config(settings).max_tokens == 256, "its answers are kept short"
    from graph.llm import make_chat_model

    # llama.cpp's server ignores `max_completion_tokens`; it must get `max_tokens` too.
    assert make_chat_model(model_config(settings)).extra_body == {"max_tokens": 256}
    check = check_model(settings)
    assert not check.ok and not check.required
    assert "tiny offline model" in check.detail and "OPENAI_API_KEY" in check.detail

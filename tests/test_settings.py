"""Settings read the standard environment names, fail with the variable's name, and find a
running local stack."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from app.errors import ConfigError
from app.settings import Settings, load_settings, process_started

STANDARD_NAMES = {
    "DATABASE_URL": ("database_url", "postgresql://u:p@db.internal:5432/cadre"),
    "REDIS_URL": ("redis_url", "redis://cache.internal:6379/0"),
    "SQS_QUEUE_URL": ("sqs_queue_url", "https://sqs.eu-west-1.amazonaws.com/1/agent_tasks"),
    "AWS_REGION": ("aws_region", "eu-west-1"),
    "AWS_ENDPOINT_URL_SQS": ("aws_endpoint_url_sqs", "http://localhost:4566"),
    "OPENAI_BASE_URL": ("openai_base_url", "http://llm.internal/v1"),
    "CADRE_MODEL": ("model", "gpt-4.1-mini"),
    "SMTP_URL": ("smtp_url", "smtp://mail.internal:25"),
}


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in [*STANDARD_NAMES, "OPENAI_API_KEY", "E2B_API_KEY", "CADRE_HOME", "HOME"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_standard_environment_names(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for env_name, (_, value) in STANDARD_NAMES.items():
        monkeypatch.setenv(env_name, value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("E2B_API_KEY", "e2b-test")
    settings = load_settings()
    for _env_name, (field, value) in STANDARD_NAMES.items():
        assert getattr(settings, field) == value
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-test"
    assert "sk-test" not in repr(settings)


def test_home_is_not_taken_from_HOME(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/root")
    assert load_settings().home == Path(".cadre")


@pytest.mark.parametrize(
    ("env_name", "value"),
    [
        ("DATABASE_URL", "mysql://root@localhost/cadre"),
        ("REDIS_URL", "memcached://localhost"),
        ("SQS_QUEUE_URL", "agent_tasks"),
        ("CADRE_API_PORT", "99999"),
        ("SMTP_URL", "mail.example.com:25"),
        ("CADRE_FETCH_ALLOW_PRIVATE", "wiki.internal, http://bad/"),
        ("CADRE_SEARCH_PROVIDER", "google"),
        ("CADRE_OUTPUT_INLINE_CHARS", "1999"),
        ("CADRE_OUTPUT_INLINE_CHARS", "-1"),
    ],
)
def test_invalid_value_names_the_variable(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, env_name: str, value: str
) -> None:
    monkeypatch.setenv(env_name, value)
    with pytest.raises(ConfigError, match=re.escape(env_name)):
        load_settings()


def _write_stack(home: Path, pid: int, started: int | None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "stack.json").write_text(json.dumps({
        "pid": pid,
        "started": started,
        "env": {"DATABASE_URL": "postgresql://cadre:pw@127.0.0.1:5544/cadre",
                "REDIS_URL": "redis://:pw@127.0.0.1:6390/0"},
    }))


def test_running_stack_supplies_service_urls(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_stack(isolated / ".cadre", os.getpid(), process_started(os.getpid()))
    settings = load_settings()
    assert settings.database_url == "postgresql://cadre:pw@127.0.0.1:5544/cadre"
    assert settings.redis_url == "redis://:pw@127.0.0.1:6390/0"

    monkeypatch.setenv("DATABASE_URL", "postgresql://other@db/x")
    assert load_settings().database_url == "postgresql://other@db/x", "environment wins"


def test_stale_stack_file_is_ignored(isolated: Path) -> None:
    started = process_started(os.getpid())
    assert started is not None
    _write_stack(isolated / ".cadre", os.getpid(), started - 1000)  # pid reused
    assert load_settings().database_url is None


def test_the_stack_file_survives_a_system_clock_step(isolated: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Liveness is judged by the start time in ticks since boot, which a clock step does not
    # move (psutil's wall-clock create_time does, and made a live stack look stale).
    import psutil._pslinux as pslinux

    _write_stack(isolated / ".cadre", os.getpid(), process_started(os.getpid()))
    real = pslinux.boot_time
    monkeypatch.setattr(pslinux, "boot_time", lambda: real() - 1)  # the clock stepped back 1 s
    assert load_settings().database_url == "postgresql://cadre:pw@127.0.0.1:5544/cadre"


def test_env_example_documents_every_setting() -> None:
    example = (Path(__file__).parent.parent / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, flags=re.M))
    for field in Settings.model_fields.values():
        names = field.validation_alias.choices  # type: ignore[union-attr]
        assert names[0] in documented, f"{names[0]} is missing from .env.example"


def test_unset_services_are_not_invented(isolated: Path) -> None:
    settings = Settings()
    assert settings.database_url is None and settings.redis_url is None
    assert os.environ.get("DATABASE_URL") is None


def test_settings_of_takes_field_names(isolated: Path) -> None:
    settings = Settings.of(sqs_wait_seconds=1, home=Path("/srv/cadre"), model="qwen")
    assert (settings.sqs_wait_seconds, settings.home, settings.model) == (1, Path("/srv/cadre"), "qwen")
    with pytest.raises(TypeError, match="unknown settings"):
        Settings.of(sqs_wait=1)


def test_an_inline_limit_of_zero_or_at_least_2000_is_taken(
        isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().output_inline_chars == 4000
    for value in (0, 2000):
        monkeypatch.setenv("CADRE_OUTPUT_INLINE_CHARS", str(value))
        assert load_settings().output_inline_chars == value

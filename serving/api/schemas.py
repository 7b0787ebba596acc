"""Request and response bodies: what the OpenAPI page documents and what 422s are made of."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from namegen.contract import MAX_NAME_LENGTH

from ..engine import MAX_TOP_K  # any k from the vocabulary size up keeps every character

MAX_N = 10_000
MAX_SCORE_NAMES = 1000
MAX_SEED = 2**63 - 1


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(10, ge=1, le=MAX_N, description="how many names")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed, same names; omitted: random, echoed")
    temperature: float = Field(1.0, ge=0, le=10, allow_inf_nan=False, description="0 (or below 1e-30): greedy")
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="sample among the k likeliest characters")
    prefix: str = Field("", max_length=MAX_NAME_LENGTH, description="every name starts with it")
    min_length: int = Field(1, ge=0, le=MAX_NAME_LENGTH, description="characters, prefix included")
    max_length: int = Field(32, ge=1, le=MAX_NAME_LENGTH, validate_default=True,  # checks the prefix too
                            description="characters, prefix included")
    unique: bool = Field(False, description="no name twice in one response")
    exclude_training: bool = Field(False, description="only names absent from the model's training list")
    model: str | None = Field(None, description="a served model's name; omitted: the default model")

    @field_validator("max_length")
    @classmethod
    def _bounds_fit(cls, max_length: int, info: ValidationInfo) -> int:
        min_length = info.data.get("min_length")
        if min_length is not None and max_length < min_length:
            raise ValueError(f"max_length ({max_length}) is below min_length ({min_length})")
        prefix = info.data.get("prefix")
        if prefix is not None and len(prefix) > max_length:
            raise ValueError(f"the prefix has {len(prefix)} characters, more than max_length ({max_length})")
        return max_length


class GeneratedName(BaseModel):
    name: str
    nll: float = Field(description="negative log-likelihood in nats, characters and end token")


class GenerateResponse(BaseModel):
    model: str
    version: str
    seed: int
    names: list[GeneratedName]
    exhausted: bool = Field(False, description="the attempt budget ran out before n names passed the filters")


ScoredText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    names: list[ScoredText] = Field(min_length=1, max_length=MAX_SCORE_NAMES)
    model: str | None = None


class CharScore(BaseModel):
    char: str = Field(description="the character, or '.' for the end token")
    p: float
    nll: float


class NameScore(BaseModel):
    name: str
    nll: float = Field(description="nats over the characters and the end token")
    nll_per_char: float
    perplexity: float
    chars: list[CharScore]


class ScoreResponse(BaseModel):
    model: str
    version: str
    results: list[NameScore]


class ModelInfo(BaseModel):
    name: str
    version: str
    type: str
    vocab: list[str]
    block_size: int
    metrics: dict[str, float]
    backend: str
    device: str
    logits_table: bool  # every context's logits precomputed at load (NAMEGEN_LOGITS_TABLE_MB)


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]

"""Request and response bodies: what the OpenAPI page documents and what 422s are made of."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from namegen.contract import MAX_GUIDANCE, MAX_NAME_LENGTH

from ..engine import MAX_TOP_K  # any k from the vocabulary size up keeps every character

MAX_N = 10_000
MAX_SCORE_NAMES = 1000
MAX_SEED = 2**63 - 1


MAX_CONDITION_TEXT = 64
ConditionText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CONDITION_TEXT)]


class ConditionFields(BaseModel):
    """A conditional model's conditions; an omitted one means any value (the marginal over it)."""

    sex: str | None = Field(None, max_length=MAX_CONDITION_TEXT, description='"F" or "M" (conditional models)')
    decade: int | None = Field(None, ge=0, le=9999, strict=True, description="1880, 1890, ..., 2010 (conditional models)")
    conditions: dict[ConditionText, ConditionText] | None = Field(
        None, max_length=8, description="other conditions of a model trained on its own columns, by name")

    def condition_pairs(self) -> tuple[tuple[str, str], ...]:
        """(condition, value) pairs the request gives, in the order LoadedModel.condition_indices checks them."""
        pairs = [("sex", self.sex), ("decade", None if self.decade is None else str(self.decade))]
        return tuple((name, value) for name, value in pairs + list((self.conditions or {}).items()) if value is not None)


class GenerateRequest(ConditionFields):
    # Numbers and booleans are strict: true is not 1, 0 is not false, "10" is not 10.
    model_config = ConfigDict(extra="forbid")

    n: int = Field(10, ge=1, le=MAX_N, strict=True, description="how many names")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, strict=True, description="same seed, same names; omitted: random, echoed")
    temperature: float = Field(1.0, ge=0, le=10, allow_inf_nan=False, strict=True, description="0 (or below 1e-30): greedy")
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, strict=True, description="sample among the k likeliest characters")
    guidance: float | None = Field(
        None, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False, strict=True,
        description="conditional models: how strongly names lean to the conditions given, classifier-free "
                    "guidance (0: plain conditional sampling); omitted: the model's default (/v1/models)")
    prefix: str = Field("", max_length=MAX_NAME_LENGTH, description="every name starts with it")
    min_length: int = Field(1, ge=0, le=MAX_NAME_LENGTH, strict=True, description="characters, prefix included")
    max_length: int = Field(32, ge=1, le=MAX_NAME_LENGTH, strict=True, validate_default=True,  # checks the prefix
                            description="characters, prefix included")
    unique: bool = Field(False, strict=True, description="no name twice in one response")
    exclude_training: bool = Field(False, strict=True, description="only names absent from the model's training list")
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
    nll: float = Field(description="negative log-likelihood in nats, characters and end token (a conditional "
                                   "model's: under `conditions`)")
    conditions: dict[str, str] | None = Field(
        None, description="a conditional model's request that left conditions out: each drawn from the training "
                          "prior given the others (the model's exact marginal); every condition's value here")


class GenerateResponse(BaseModel):
    model: str
    version: str
    seed: int
    names: list[GeneratedName]
    exhausted: bool = Field(False, description="the attempt budget ran out before n names passed the filters")


ScoredText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)]


class ScoreRequest(ConditionFields):
    model_config = ConfigDict(extra="forbid")

    names: list[ScoredText] = Field(min_length=1, max_length=MAX_SCORE_NAMES)
    model: str | None = None
    explain: bool = Field(False, strict=True, description="conditional models: each name's posterior over the "
                                                         "condition values, p(c | name) with p(c) the training frequencies")


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
    posterior: dict[str, dict[str, float]] | None = Field(None, description="explain: p(value | name) per condition")
    most_likely: dict[str, str] | None = Field(None, description="explain: each condition's most likely value")


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
    conditions: dict[str, list[str]] = Field(default_factory=dict, description="a conditional model's conditions "
                                                                               "and the values each takes")
    guidance: float = Field(0.0, description="a conditional model's default guidance scale (generate's `guidance`)")


class RejectedVersion(BaseModel):
    model: str
    version: str = Field(description="the version LATEST names, or 'LATEST' when it names none")
    error: str = Field(description="why it is not served (the model's previous version, if any, still is)")


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]
    rejected: list[RejectedVersion] = Field(default_factory=list, description="registry entries refused")


# -- what errors look like, for the OpenAPI page ----------------------------------------------------
class ErrorBody(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    type: str
    loc: list[str | int] = Field(description="where: 'body', then the field's path")
    msg: str
    input: Any = None
    ctx: dict | None = None


class ValidationErrorBody(BaseModel):
    detail: list[ValidationIssue]


ERRORS = {
    401: "missing or wrong bearer token",
    403: "the admin API is disabled (NAMEGEN_ADMIN_TOKEN is unset)",
    404: "no such model is served",
    413: "the body is over NAMEGEN_MAX_BODY_BYTES",
    422: "the body is malformed or a field is invalid; `detail` says where and why",
    429: "too many requests are waiting; retry after Retry-After seconds",
    503: "not ready yet, or the model is being reloaded; retry after Retry-After seconds",
    504: "not done within NAMEGEN_REQUEST_TIMEOUT_S; ask for fewer names or retry",
}


def error_responses(*statuses: int) -> dict:
    """FastAPI's `responses=` for these statuses, each with its body model."""
    return {status: {"model": ValidationErrorBody if status == 422 else ErrorBody, "description": ERRORS[status]}
            for status in statuses}


def json_body(model: type[BaseModel]) -> dict:
    """FastAPI's `openapi_extra=` documenting a JSON body that the route reads itself (body.read_body)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}

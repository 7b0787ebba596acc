"""What the API answers, as dataclasses whose fields are named like the JSON, so the API docs read across.

Each top-level result keeps the decoded body in `raw` (for `--json` and for fields a newer server adds);
parsing reads only the documented keys and ignores the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GeneratedName:
    name: str
    nll: float  # negative log-likelihood of the whole name under the model, end token included
    conditions: dict[str, str] | None = None  # a conditional model's request that left some out: those drawn


@dataclass
class Generation:
    model: str
    version: str
    seed: int  # the seed actually used: send it back to get the same names again
    names: list[GeneratedName]
    exhausted: bool = False  # fewer names than asked: the filters rejected too many samples
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> Generation:
        return cls(model=data["model"], version=data["version"], seed=data["seed"],
                   names=[GeneratedName(name=item["name"], nll=item["nll"], conditions=item.get("conditions"))
                          for item in data["names"]],
                   exhausted=bool(data.get("exhausted", False)), raw=data)


@dataclass
class CharProb:
    char: str  # "." is the end token
    p: float  # probability the model gave this character after the ones before it
    nll: float


@dataclass
class NameScore:
    name: str
    nll: float
    nll_per_char: float
    perplexity: float
    chars: list[CharProb]
    posterior: dict[str, dict[str, float]] | None = None  # explain: p(value | name) per condition
    most_likely: dict[str, str] | None = None  # explain: each condition's most likely value


@dataclass
class Scores:
    model: str
    version: str
    results: list[NameScore]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> Scores:
        results = [NameScore(name=item["name"], nll=item["nll"], nll_per_char=item["nll_per_char"],
                             perplexity=item["perplexity"],
                             chars=[CharProb(char=c["char"], p=c["p"], nll=c["nll"]) for c in item["chars"]],
                             posterior=item.get("posterior"), most_likely=item.get("most_likely"))
                   for item in data["results"]]
        return cls(model=data["model"], version=data["version"], results=results, raw=data)


@dataclass
class ModelInfo:
    name: str
    version: str
    type: str  # the architecture, e.g. "mlp" or "bigram-counts"
    vocab: list[str]
    block_size: int
    metrics: dict[str, float]  # train_nll, val_nll, test_nll, ...
    backend: str
    device: str
    conditions: dict[str, list[str]] = field(default_factory=dict)  # a conditional model's, and their values
    guidance: float = 0.0  # a conditional model's default guidance scale

    @classmethod
    def from_json(cls, data: dict) -> ModelInfo:
        return cls(name=data["name"], version=data["version"], type=data["type"], vocab=list(data["vocab"]),
                   block_size=data["block_size"], metrics=dict(data["metrics"]), backend=data["backend"],
                   device=data["device"], conditions=dict(data.get("conditions", {})),
                   guidance=float(data.get("guidance", 0.0)))


@dataclass
class ModelList:
    default: str
    models: list[ModelInfo]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> ModelList:
        return cls(default=data["default"], models=[ModelInfo.from_json(m) for m in data["models"]], raw=data)


@dataclass
class Health:
    ready: bool
    status: str  # "ready" or "not ready"
    models: dict[str, str]  # name -> version of each loaded model
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> Health:
        return cls(ready=data["status"] == "ready", status=data["status"], models=dict(data.get("models") or {}),
                   raw=data)

"""The models. One interface: context indices int64 [batch, block_size] -> logits float32 [batch, vocab]."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

TANH_GAIN = 5 / 3  # Kaiming gain for tanh (lecture 3)


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    block_size: int = 3
    n_embd: int = 16  # mlp: embedding width per character
    n_hidden: int = 256  # mlp: width of every hidden layer
    n_layers: int = 1  # mlp: number of Linear -> BatchNorm -> tanh blocks
    smoothing: float = 1.0  # bigram-counts: add-k
    bn_momentum: float = 0.01  # running statistics; the lectures used 0.001 at batch 32

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class BigramCounts(nn.Module):
    """Lecture 1's count matrix: P(next | last char), add-k smoothed, row-normalised."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        v = cfg.vocab_size
        self.register_buffer("counts", torch.zeros(v, v))
        self.register_buffer("log_probs", torch.full((v, v), -torch.log(torch.tensor(float(v))).item()))

    @torch.no_grad()
    def fit(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        v = self.cfg.vocab_size
        pairs = X[:, -1] * v + Y
        self.counts.copy_(torch.bincount(pairs, minlength=v * v).view(v, v).float())
        smoothed = self.counts + self.cfg.smoothing
        self.log_probs.copy_((smoothed / smoothed.sum(1, keepdim=True)).log())

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.log_probs[context[:, -1]]  # log-probabilities are valid logits


class BigramNeural(nn.Module):
    """Lecture 1's neural bigram: one-hot(last char) @ W, trained by gradient descent."""

    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.randn(cfg.vocab_size, cfg.vocab_size, generator=generator))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        # one_hot(last) @ W selects a row of W; indexing is the same product without the zeros.
        return self.weight[context[:, -1]]

    def regularisation(self) -> torch.Tensor:
        return (self.weight**2).mean()


class MLP(nn.Module):
    """Bengio et al. 2003 as in lectures 2-3: embed, flatten, [Linear -> BatchNorm1d -> tanh] x n, Linear."""

    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        layers: list[nn.Module] = []
        fan_in = cfg.block_size * cfg.n_embd
        for _ in range(cfg.n_layers):
            layers += [
                nn.Linear(fan_in, cfg.n_hidden, bias=False),  # BatchNorm's shift makes a bias redundant
                nn.BatchNorm1d(cfg.n_hidden, momentum=cfg.bn_momentum),
                nn.Tanh(),
            ]
            fan_in = cfg.n_hidden
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, cfg.vocab_size)
        self._init_weights(generator)

    @torch.no_grad()
    def _init_weights(self, generator: torch.Generator | None) -> None:
        self.embedding.weight.normal_(generator=generator)
        for m in self.hidden:
            if isinstance(m, nn.Linear):
                m.weight.normal_(std=TANH_GAIN / m.in_features**0.5, generator=generator)
        # A small output layer starts near the uniform distribution (lecture 3's "hockey stick" fix).
        self.head.weight.normal_(std=0.1 / self.head.in_features**0.5, generator=generator)
        self.head.bias.zero_()

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        x = self.embedding(context).flatten(1)  # [B, T] -> [B, T*n_embd]
        return self.head(self.hidden(x))  # [B, vocab]


MODEL_TYPES: dict[str, type[nn.Module]] = {
    "bigram-counts": BigramCounts,
    "bigram-neural": BigramNeural,
    "mlp": MLP,
}
GRADIENT_FREE = {"bigram-counts"}


def build_model(cfg: ModelConfig, generator: torch.Generator | None = None) -> nn.Module:
    if cfg.model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model {cfg.model_type!r}; choose from {', '.join(MODEL_TYPES)}")
    if cfg.model_type.startswith("bigram"):
        cfg.block_size = 1  # a bigram sees only the last character
    cls = MODEL_TYPES[cfg.model_type]
    return cls(cfg) if cfg.model_type in GRADIENT_FREE else cls(cfg, generator)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nll(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, chunk: int = 65536) -> float:
    """Mean negative log-likelihood in nats per character (end token included), eval mode."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(X), chunk):
            logits = model(X[i : i + chunk]).double()  # float64 sum: exact enough to compare across tools
            total += F.cross_entropy(logits, Y[i : i + chunk], reduction="sum").item()
    model.train(was_training)
    return total / max(len(X), 1)

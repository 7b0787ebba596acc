"""The models. One interface: context indices int64 [batch, block_size] -> logits float32 [batch, vocab]."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import vector_math  # noqa: F401  (settles oneMKL's dispatch before any threaded op; see the module)

TANH_GAIN = 5 / 3  # Kaiming gain for tanh (lecture 3)


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    block_size: int = 3
    n_embd: int = 16  # mlp: embedding width per character
    n_hidden: int = 256  # mlp: width of every hidden layer
    n_hidden_first: int = 0  # wavenet: width of level 1 (0: n_hidden); free when served, where level 1 is a table
    n_layers: int = 1  # mlp: number of Linear -> BatchNorm -> tanh blocks
    smoothing: float = 1.0  # bigram-counts: add-k
    bn_momentum: float = 0.01  # running statistics; the lectures used 0.001 at batch 32
    dropout: float = 0.0  # mlp, wavenet: after every tanh while training (the identity in eval and export)
    init_gain: float = TANH_GAIN  # mlp, wavenet: the hidden Linears start with std init_gain / sqrt(fan_in)
    batchnorm: bool = True  # mlp, wavenet: False gives lecture 3's stack before BatchNorm, Linear -> tanh
    members: list[dict] = field(default_factory=list)  # ensemble: the members' configs
    conditions: list[int] = field(default_factory=list)  # values + 1 ("any") per condition (conditional_models.py)
    condition_dropout: float = 0.2  # while training, each condition of a row is "any" with this probability
    condition_dropout_all: float = 0.0  # and every condition of a row at once, with this one

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.conditions:  # an unconditional model's checkpoint.json stays as it was
            del d["conditions"], d["condition_dropout"], d["condition_dropout_all"]
        if not self.n_hidden_first:  # and so does a wavenet's of one width
            del d["n_hidden_first"]
        return d

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


@torch.no_grad()
def _init_tanh_stack(model: nn.Module, generator: torch.Generator | None) -> None:
    """Kaiming init with cfg.init_gain (tanh's 5/3 by default) for model.hidden's Linears; a small output
    layer (model.head)."""
    model.embedding.weight.normal_(generator=generator)
    for m in model.hidden:
        if isinstance(m, nn.Linear):
            m.weight.normal_(std=model.cfg.init_gain / m.in_features**0.5, generator=generator)
            if m.bias is not None:  # only without BatchNorm
                m.bias.zero_()
    # A small output layer starts near the uniform distribution (lecture 3's "hockey stick" fix).
    model.head.weight.normal_(std=0.1 / model.head.in_features**0.5, generator=generator)
    model.head.bias.zero_()


def _tanh_block(cfg: ModelConfig, fan_in: int, batchnorm: type[nn.BatchNorm1d], width: int = 0) -> list[nn.Module]:
    """Linear -> BatchNorm -> tanh (-> dropout), `width` wide (0: cfg.n_hidden); without BatchNorm the Linear
    gets its bias back."""
    width = width or cfg.n_hidden
    if not cfg.batchnorm:
        return [nn.Linear(fan_in, width), nn.Tanh(), *_dropout(cfg)]
    return [nn.Linear(fan_in, width, bias=False),  # BatchNorm's shift makes a bias redundant
            batchnorm(width, momentum=cfg.bn_momentum), nn.Tanh(), *_dropout(cfg)]


def _dropout(cfg: ModelConfig) -> list[nn.Module]:
    # No module at all without dropout, so layer indices (state_dict keys) match older checkpoints.
    return [nn.Dropout(cfg.dropout)] if cfg.dropout > 0 else []


class MLP(nn.Module):
    """Bengio et al. 2003 as in lectures 2-3: embed, flatten, [Linear -> BatchNorm1d -> tanh] x n, Linear."""

    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        layers: list[nn.Module] = []
        fan_in = cfg.block_size * cfg.n_embd
        for _ in range(cfg.n_layers):
            layers += _tanh_block(cfg, fan_in, nn.BatchNorm1d)
            fan_in = cfg.n_hidden
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, cfg.vocab_size)
        _init_tanh_stack(self, generator)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        x = self.embedding(context).flatten(1)  # [B, T] -> [B, T*n_embd]
        return self.head(self.hidden(x))  # [B, vocab]


class FlattenConsecutive(nn.Module):
    """[B, T, C] -> [B, T/n, C*n]: n neighbouring positions side by side (lecture 5); [B, C*n] when T == n."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        x = x.reshape(b, t // self.n, c * self.n)
        return x.squeeze(1) if x.shape[1] == 1 else x


class BatchNormLastDim(nn.BatchNorm1d):
    """BatchNorm over the last dimension of [B, C] or [B, T, C]: statistics over every other dimension.

    Lecture 5's bug was normalising [B, T, C] over dim 0 only; BatchNorm1d wants channels in dim 1,
    so the 3-D case is transposed to [B, C, T], where it averages over (0, 2), i.e. the original (0, 1).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        return super().forward(x)


class WaveNet(nn.Module):
    """Lecture 5's hierarchical model: embed, then log2(block_size) levels of
    FlattenConsecutive(2) -> Linear (no bias) -> BatchNorm -> tanh, then an output Linear."""

    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__()
        levels = cfg.block_size.bit_length() - 1
        if cfg.block_size < 2 or 2**levels != cfg.block_size:
            raise ValueError(f"wavenet needs a block_size that is a power of 2 (>= 2), got {cfg.block_size}")
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        layers: list[nn.Module] = []
        fan_in = 2 * cfg.n_embd
        for level in range(levels):
            width = (cfg.n_hidden_first if level == 0 and levels > 1 else 0) or cfg.n_hidden
            layers += [FlattenConsecutive(2), *_tanh_block(cfg, fan_in, BatchNormLastDim, width)]
            fan_in = 2 * width
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(cfg.n_hidden, cfg.vocab_size)
        _init_tanh_stack(self, generator)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.embedding(context)))  # [B, T] -> [B, T, E] -> ... -> [B, V]


class Ensemble(nn.Module):
    """Trained models of one vocabulary and block size, predicting the mean of their distributions.

    The output log(mean_k softmax(logits_k)) is itself a valid logits vector (its softmax is the mean),
    so export, the ONNX contract and serving treat an ensemble like any other model.
    """

    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__()
        if len(cfg.members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(cfg.members)}")
        self.members = nn.ModuleList(build_model(ModelConfig.from_dict(m), generator) for m in cfg.members)
        shapes = {(m.cfg.vocab_size, m.cfg.block_size, tuple(m.cfg.conditions)) for m in self.members}
        if len(shapes) != 1:
            raise ValueError(f"ensemble members differ in (vocab size, block size, conditions): {sorted(shapes)}")
        cfg.vocab_size, cfg.block_size, conditions = shapes.pop()
        cfg.conditions = list(conditions)  # conditional members read the same condition columns
        self.cfg = cfg

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.mix([m(context) for m in self.members])

    @staticmethod
    def mix(member_logits: list[torch.Tensor]) -> torch.Tensor:
        """log of the mean of the members' distributions; the step model (export/step_export.py) mixes
        with the same ops, so both graphs compute it alike."""
        logp = torch.stack([F.log_softmax(logits, dim=-1) for logits in member_logits])  # [K, B, V]
        return torch.logsumexp(logp, dim=0) - math.log(len(member_logits))


MODEL_TYPES: dict[str, type[nn.Module]] = {
    "bigram-counts": BigramCounts,
    "bigram-neural": BigramNeural,
    "mlp": MLP,
    "wavenet": WaveNet,
}
GRADIENT_FREE = {"bigram-counts"}
# Per-model defaults that differ from ModelConfig's (the CLI applies them before its options).
MODEL_DEFAULTS: dict[str, dict] = {"wavenet": {"block_size": 8, "n_embd": 24, "n_hidden": 128}}


def build_model(cfg: ModelConfig, generator: torch.Generator | None = None) -> nn.Module:
    if cfg.model_type == "ensemble":  # made from trained checkpoints (`python -m training ensemble`), not trained
        return Ensemble(cfg, generator)
    if cfg.model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model {cfg.model_type!r}; choose from {', '.join(MODEL_TYPES)}")
    if cfg.model_type.startswith("bigram"):
        cfg.block_size = 1  # a bigram sees only the last character
    if cfg.conditions:
        from .conditional_models import build_conditional

        return build_conditional(cfg, generator)
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

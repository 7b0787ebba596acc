"""Conditional models: the same models, reading condition indices after the context.

Input int64 [batch, block_size + k]: the context, then one index per condition (0: "any"). Each
condition's value is a learned embedding; the conditions' embeddings are summed and combined with the
context: added to every character's embedding (mlp, wavenet); bigram-neural, whose context is a row of
its weight matrix, adds a row per (condition value, last character), a bigram table per value that starts
at zero (one row per value alone would be shared by a quarter of the batch: too big a step at the
lecture's learning rate of 200). While training, each condition of each row is replaced by
"any" with probability cfg.condition_dropout, and all of a row's at once with cfg.condition_dropout_all,
so "any" learns the marginal over that condition, and over all of them (what requests without
conditions get, and what classifier-free guidance steers away from).
Export gives the graph two inputs, `context` and `condition` (export/onnx_export.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .models import MLP, BigramNeural, ModelConfig, WaveNet


class ConditionEmbedding(nn.Module):
    """condition int64 [B, k] -> the sum of each condition's embedding, float32 [B, dim]."""

    def __init__(self, sizes: list[int], dim: int, dropout: tuple[float, float], generator: torch.Generator | None,
                 std: float):
        """dropout: (each condition's, all of a row's at once)."""
        super().__init__()
        self.dropout = dropout
        self.tables = nn.ModuleList(nn.Embedding(size, dim) for size in sizes)
        with torch.no_grad():
            for table in self.tables:
                table.weight.normal_(std=std, generator=generator)

    def forward(self, condition: torch.Tensor, offset: torch.Tensor | int = 0) -> torch.Tensor:
        """offset: added to each condition's row (bigram-neural: value * vocab + last character)."""
        condition = drop_conditions(condition, *self.dropout, self.training)
        rows = condition + offset  # [B, k]
        return sum(table(rows[:, i]) for i, table in enumerate(self.tables))


def drop_conditions(condition: torch.Tensor, dropout: float, dropout_all: float, training: bool) -> torch.Tensor:
    """Condition dropout, in training only: each index becomes "any" (0) with probability `dropout`, and every
    index of a row with `dropout_all`. Independent drops alone rarely leave a row with none (p**k): the "any"
    of every condition together, the one requests without conditions get, would learn from few rows."""
    if not training or dropout == dropout_all == 0:
        return condition
    # The global generator, as nn.Dropout: seeded by the training loop and saved for --resume.
    drop = torch.rand(condition.shape) < dropout
    if dropout_all:
        drop |= torch.rand(condition.shape[0], 1) < dropout_all
    return condition.masked_fill(drop, 0)


def _split(cfg: ModelConfig, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[:, : cfg.block_size], x[:, cfg.block_size:]  # [B, T], [B, k]


class ConditionalBigramNeural(BigramNeural):
    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)
        # Named embedding*: AdamW leaves embeddings undecayed (train._make_optimizer).
        v = cfg.vocab_size
        self.embedding_conditions = ConditionEmbedding([size * v for size in cfg.conditions], v,
                                                       (cfg.condition_dropout, cfg.condition_dropout_all), generator,
                                                       std=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context, condition = _split(self.cfg, x)
        last = context[:, -1]  # [B]; row value * vocab + last of each condition's table ("any" is value 0)
        return self.weight[last] + self.embedding_conditions(condition * self.cfg.vocab_size, offset=last[:, None])


class _ConditionedEmbedding:
    """The mlp's and the wavenet's conditioning: each condition's embedding added to every character's."""

    def _add_condition_embedding(self, cfg: ModelConfig, generator: torch.Generator | None) -> None:
        self.embedding_conditions = ConditionEmbedding(cfg.conditions, cfg.n_embd,
                                                       (cfg.condition_dropout, cfg.condition_dropout_all), generator,
                                                       std=1.0)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        context, condition = _split(self.cfg, x)
        return self.embedding(context) + self.embedding_conditions(condition)[:, None, :]  # [B, T, n_embd]


class ConditionalMLP(_ConditionedEmbedding, MLP):
    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)
        self._add_condition_embedding(cfg, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.embed(x).flatten(1)))


class ConditionalWaveNet(_ConditionedEmbedding, WaveNet):
    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)
        self._add_condition_embedding(cfg, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.embed(x)))


CONDITIONAL_TYPES = {"bigram-neural": ConditionalBigramNeural, "mlp": ConditionalMLP, "wavenet": ConditionalWaveNet}


def build_conditional(cfg: ModelConfig, generator: torch.Generator | None = None) -> nn.Module:
    if cfg.model_type not in CONDITIONAL_TYPES:
        raise ValueError(f"{cfg.model_type} takes no conditions; conditional models: {', '.join(CONDITIONAL_TYPES)}")
    return CONDITIONAL_TYPES[cfg.model_type](cfg, generator)

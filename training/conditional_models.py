"""Conditional models: the same models, reading condition indices after the context.

Input int64 [batch, block_size + k]: the context, then one index per condition (0: "any"). Each
condition's value is a learned embedding; the conditions' embeddings are summed and combined with the
context: added to every character's embedding (mlp, wavenet), or added to the logits (bigram-neural,
whose context is a row of its weight matrix). While training, each condition of each row is replaced by
"any" with probability cfg.condition_dropout, so "any" learns the marginal over that condition.
Export gives the graph two inputs, `context` and `condition` (export/onnx_export.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .models import MLP, BigramNeural, ModelConfig, WaveNet


class ConditionEmbedding(nn.Module):
    """condition int64 [B, k] -> the sum of each condition's embedding, float32 [B, dim]."""

    def __init__(self, sizes: list[int], dim: int, dropout: float, generator: torch.Generator | None, std: float):
        super().__init__()
        self.dropout = dropout
        self.tables = nn.ModuleList(nn.Embedding(size, dim) for size in sizes)
        with torch.no_grad():
            for table in self.tables:
                table.weight.normal_(std=std, generator=generator)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout > 0:
            # The global generator, as nn.Dropout: seeded by the training loop and saved for --resume.
            condition = condition.masked_fill(torch.rand(condition.shape) < self.dropout, 0)
        return sum(table(condition[:, i]) for i, table in enumerate(self.tables))


def _split(cfg: ModelConfig, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[:, : cfg.block_size], x[:, cfg.block_size:]  # [B, T], [B, k]


class ConditionalBigramNeural(BigramNeural):
    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)
        # Named embedding*: AdamW leaves embeddings undecayed (train._make_optimizer).
        self.embedding_conditions = ConditionEmbedding(cfg.conditions, cfg.vocab_size, cfg.condition_dropout,
                                                       generator, std=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context, condition = _split(self.cfg, x)
        return self.weight[context[:, -1]] + self.embedding_conditions(condition)  # [B, V]


class ConditionalMLP(MLP):
    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)
        self.embedding_conditions = ConditionEmbedding(cfg.conditions, cfg.n_embd, cfg.condition_dropout,
                                                       generator, std=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context, condition = _split(self.cfg, x)
        e = self.embedding(context) + self.embedding_conditions(condition)[:, None, :]  # [B, T, n_embd]
        return self.head(self.hidden(e.flatten(1)))


class ConditionalWaveNet(WaveNet):
    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)
        self.embedding_conditions = ConditionEmbedding(cfg.conditions, cfg.n_embd, cfg.condition_dropout,
                                                       generator, std=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context, condition = _split(self.cfg, x)
        e = self.embedding(context) + self.embedding_conditions(condition)[:, None, :]  # [B, T, n_embd]
        return self.head(self.hidden(e))


CONDITIONAL_TYPES = {"bigram-neural": ConditionalBigramNeural, "mlp": ConditionalMLP, "wavenet": ConditionalWaveNet}


def build_conditional(cfg: ModelConfig, generator: torch.Generator | None = None) -> nn.Module:
    if cfg.model_type not in CONDITIONAL_TYPES:
        raise ValueError(f"{cfg.model_type} takes no conditions; conditional models: {', '.join(CONDITIONAL_TYPES)}")
    return CONDITIONAL_TYPES[cfg.model_type](cfg, generator)

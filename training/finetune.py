"""Fine-tuning: more steps from a trained checkpoint, optionally with explain's loss.

explain answers p(v | name) proportional to p(name | v) p(v), from the generative model alone
(serving/conditions.py). Maximum likelihood spreads the model's capacity over every character alike, and
a rare spelling it has not memorised ("christapher", a boy's name in the records) leans to the sex whose
names are more varied. Explain's loss adds, each step, for a batch of training records:
    weight * -log softmax over v of [log p(name | v, rest) + log p(v, rest)], at the record's value v,
one condition's posterior with the record's other conditions given: the conditional likelihood of that
condition (the discriminative training of a generative model; MMI in speech recognition). The model stays a
generative model: generate, score and explain use it unchanged, and val NLL is measured as always.
Each step costs one forward per value of the condition over the batch's whole names, on top of the rows.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .conditions import ConditionalDataset
from .data import Dataset


@dataclass
class FinetuneConfig:
    init: str  # the checkpoint folder it starts from
    init_sha256: str  # of that checkpoint's word list: fine-tuning trains on the same records and split
    explain: str | None = None  # the condition whose posterior explain's loss trains; None: likelihood only
    explain_weight: float = 0.5
    explain_names: int = 32  # training records per step in explain's loss


class Finetune:
    """The objective train() uses: cross-entropy on the training rows, plus explain's loss when configured."""

    kind = "finetune"

    def __init__(self, data: Dataset, block_size: int, cfg: FinetuneConfig, prior: list[dict]):
        self.cfg = cfg
        self.block_size = block_size
        self.train_set = data.contexts("train", block_size)
        if cfg.explain is None:
            return
        assert isinstance(data, ConditionalDataset)
        self.column = block_size + data.conditions.names.index(cfg.explain)
        self.values = len(data.conditions.values[data.conditions.names.index(cfg.explain)])
        lengths = torch.tensor([len(w) + 1 for w in data.split.train])  # rows per record, laid end to end
        self.lengths, self.starts = lengths, torch.cumsum(lengths, 0) - lengths
        self.combos = data.part_indices("train")  # [records, k]
        # log p(c) of every combination of condition values seen in training; the others can't be.
        self.log_prior = {tuple(combo): math.log(entry["p"]) for combo, entry in
                          zip(data.conditions.indices([tuple(e["values"]) for e in prior], data.source).tolist(), prior)}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def extra_loss(self, model, generator: torch.Generator) -> torch.Tensor | None:
        """weight * explain's cross-entropy over a batch of training records drawn with the training generator."""
        if self.cfg.explain is None:
            return None
        records = torch.randint(0, len(self.lengths), (self.cfg.explain_names,), generator=generator)
        lengths = self.lengths[records]
        record_of_row = torch.repeat_interleave(torch.arange(len(records)), lengths)
        rows = torch.repeat_interleave(self.starts[records], lengths) + \
            torch.arange(int(lengths.sum())) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        X, Y = self.train_set[0][rows], self.train_set[1][rows]
        variants = X.repeat(self.values, 1)  # every value of the condition in turn, the other conditions kept
        variants[:, self.column] = torch.arange(1, self.values + 1).repeat_interleave(len(X))
        logp = -F.cross_entropy(model(variants), Y.repeat(self.values), reduction="none").view(self.values, -1)
        per_record = torch.zeros(self.values, len(records)).index_add_(1, record_of_row, logp)  # log p(name | v, rest)
        combos = self.combos[records]
        column = self.column - self.block_size
        prior = torch.tensor([[self.log_prior.get(tuple(combo[:column] + [v] + combo[column + 1:]), -math.inf)
                               for combo in combos.tolist()] for v in range(1, self.values + 1)])
        return self.cfg.explain_weight * F.cross_entropy((per_record + prior).T, combos[:, column] - 1)

    def describe(self) -> dict:
        return asdict(self.cfg)

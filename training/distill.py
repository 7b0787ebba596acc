"""Distillation (Hinton, Vinyals and Dean 2015): train one model on a teacher's soft targets.

The teacher (usually the wavenet ensemble) runs once, before training, on every training context and on
an optional transfer set of names it samples itself (Hinton's "transfer set": more contexts, labelled by
the teacher alone). Its distributions at temperature T are kept [contexts, vocab]; each step the student's
loss is alpha * T**2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy with the hard labels (the
T**2 keeps the soft gradients' scale as T changes). Evaluation stays the plain NLL on the real split.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import Dataset, build_contexts
from .sample import sample_names

CHUNK_ROWS = 65536  # teacher forwards and sampling in pieces: bounded memory
SAMPLE_CHUNK_NAMES = 16384


@dataclass
class DistillConfig:
    temperature: float = 1.0
    alpha: float = 1.0  # weight of the soft targets; 1 - alpha on the hard labels
    transfer_names: int = 0  # names sampled from the teacher whose contexts join the training contexts
    seed: int = 1337  # of the transfer set's sampling


@torch.no_grad()
def soft_targets(teacher: nn.Module, contexts: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 [N, vocab]: the teacher's log-probabilities at `temperature` for every context."""
    teacher.eval()
    return torch.cat([F.log_softmax(teacher(contexts[i : i + CHUNK_ROWS]) / temperature, dim=-1)
                      for i in range(0, len(contexts), CHUNK_ROWS)])


def transfer_set(teacher: nn.Module, data: Dataset, block_size: int, names: int, seed: int):
    """Contexts and next characters of `names` names the teacher samples (empty ones included: they teach
    the end token at the start)."""
    sampled = []
    for i, start in enumerate(range(0, names, SAMPLE_CHUNK_NAMES)):
        sampled += sample_names(teacher, data.vocab, min(SAMPLE_CHUNK_NAMES, names - start), seed + i)
    return build_contexts(sampled, data.vocab, block_size)


class Distillation:
    """The objective train() uses instead of cross-entropy on the training split."""

    kind = "distillation"

    def __init__(self, teacher: nn.Module, data: Dataset, block_size: int, cfg: DistillConfig, teacher_meta: dict):
        X, Y = data.contexts("train", block_size)
        if cfg.transfer_names:
            Xs, Ys = transfer_set(teacher, data, block_size, cfg.transfer_names, cfg.seed)
            X, Y = torch.cat([X, Xs]), torch.cat([Y, Ys])
        self.train_set = (X, Y)
        self.targets = soft_targets(teacher, X, cfg.temperature)  # computed once: [N, vocab]
        self.cfg = cfg
        self.teacher = {"model_type": teacher_meta["model_type"], "metrics": teacher_meta["metrics"],
                        "parameters": teacher_meta["parameters"]}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        t, alpha = self.cfg.temperature, self.cfg.alpha
        target = self.targets if rows is None else self.targets[rows]
        soft = F.kl_div(F.log_softmax(logits / t, dim=-1), target, reduction="batchmean", log_target=True) * t * t
        if alpha == 1:
            return soft
        return alpha * soft + (1 - alpha) * F.cross_entropy(logits, labels)

    def describe(self) -> dict:
        return {**asdict(self.cfg), "teacher": self.teacher, "training_contexts": len(self.train_set[0])}

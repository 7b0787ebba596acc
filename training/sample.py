"""The lectures' sampler, batched: draw names one character at a time from a torch model."""
from __future__ import annotations

import torch

from namegen.contract import MAX_NAME_LENGTH

from .data import Vocab


@torch.no_grad()
def sample_names(model, vocab: Vocab, n: int, seed: int, max_length: int = MAX_NAME_LENGTH,
                 condition: list[int] | None = None, guidance: float = 0.0) -> list[str]:
    """condition: a conditional model's index per condition (0: any), the same for every name; guidance w:
    draw from logits(condition) + w * (logits(condition) - logits(any)), as serving does."""
    model.eval()

    def conditioned(context: torch.Tensor, indices: list[int]) -> torch.Tensor:
        return model(torch.cat([context, torch.tensor([indices]).expand(len(context), -1)], dim=1))

    def forward(context: torch.Tensor) -> torch.Tensor:
        if condition is None:
            return model(context)
        logits = conditioned(context, condition)
        if guidance and any(condition):
            logits = logits + guidance * (logits - conditioned(context, [0] * len(condition)))
        return logits

    generator = torch.Generator().manual_seed(seed)
    block_size = model.cfg.block_size
    context = torch.zeros(n, block_size, dtype=torch.long)  # [n, T], all boundary
    out = torch.zeros(n, max_length, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    for pos in range(max_length):
        probs = torch.softmax(forward(context), dim=-1)  # [n, vocab]
        ix = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        ix[done] = 0
        out[:, pos] = ix
        done |= ix == 0
        if done.all():
            break
        context = torch.cat([context[:, 1:], ix[:, None]], dim=1)
    names = []
    for row in out.tolist():
        end = row.index(0) if 0 in row else len(row)
        names.append(vocab.decode(row[:end]))
    return names

"""The lectures' sampler, batched: draw names one character at a time from a torch model."""
from __future__ import annotations

import torch

from namegen.contract import MAX_NAME_LENGTH

from .data import Vocab


@torch.no_grad()
def sample_names(model, vocab: Vocab, n: int, seed: int, max_length: int = MAX_NAME_LENGTH,
                 condition: list[int] | None = None, guidance: float = 0.0,
                 prior: list[tuple[list[int], float]] | None = None) -> list[str]:
    """condition: a conditional model's index per condition (0: left out), the same for every name. As
    serving does: each name draws the conditions left out from `prior` ((indices, p) per combination of values
    seen in training), the model's exact marginal (without a prior: the learned "any"); guidance w draws from
    logits(c) + w * (logits(c) - logits(c with the named conditions "any"))."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    if condition is not None:
        named = torch.tensor([condition]).expand(n, -1)
        rows = named.clone()
        combos = [(c, p) for c, p in prior or [] if all(f in (0, v) for f, v in zip(condition, c))]
        if 0 in condition and combos:
            pick = torch.multinomial(torch.tensor([p for _, p in combos]), n, replacement=True, generator=generator)
            rows = torch.tensor([c for c, _ in combos])[pick]
        unnamed = rows * (named == 0)  # the named conditions as "any": what guidance steers away from

    def forward(context: torch.Tensor) -> torch.Tensor:
        if condition is None:
            return model(context)
        logits = model(torch.cat([context, rows], dim=1))
        if guidance and any(condition):
            logits = logits + guidance * (logits - model(torch.cat([context, unnamed], dim=1)))
        return logits

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

"""Settle oneMKL's vector-math dispatch before any threaded op, so a seed gives the same bits.

ATen hands contiguous float unary ops (tanh, exp, sqrt, ...) to oneMKL's vector math, each thread its
chunk. oneMKL picks each function's kernel on that function's first call; in the oneMKL 2024.2 of the
torch 2.13 wheel, first calls racing on two threads can run one thread's chunk of that one call through
a low-accuracy kernel (errors near 1e-4; pytorch/pytorch#188792, gone in oneMKL 2025). With the other
vCPU busy, up to one fresh process in ten computed its first tanh that way (README, Training), and a
fine-tune's weights then ended in other bits.
A 1-element call of each function runs on the calling thread alone and settles its dispatch for good.
"""
from __future__ import annotations

import torch

# The float ops ATen routes to oneMKL's vector math (aten/src/ATen/cpu/vml.h), in both precisions.
_FUNCTIONS = (torch.acos, torch.asin, torch.atan, torch.cos, torch.erf, torch.erfc, torch.erfinv, torch.exp,
              torch.log, torch.log10, torch.log2, torch.sin, torch.sqrt, torch.tan, torch.tanh, torch.trunc)


def settle_dispatch() -> None:
    for dtype in (torch.float32, torch.float64):
        x = torch.full((1,), 0.5, dtype=dtype)
        for function in _FUNCTIONS:
            function(x)


settle_dispatch()  # at import, by models.py: every model built, loaded or trained here comes after it

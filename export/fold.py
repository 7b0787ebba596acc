"""Fold every BatchNorm into the Linear before it: eval-mode BatchNorm is an affine map per channel.

BN(x) = (x - mu) * g / sqrt(var + eps) + beta, applied to x = W a + b, is the Linear
W' = W * s, b' = (b - mu) * s + beta with s = g / sqrt(var + eps) (s scales output rows of W).
The channels must be the Linear's output features, i.e. the last dimension: true for BatchNorm1d
on [B, C], and for a BatchNorm that normalises the last dimension of [B, T, C] (WaveNet-style).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import ExportError


class FoldError(ExportError):
    pass


@torch.no_grad()
def fold_linear_batchnorm(linear: nn.Linear, bn: _BatchNorm) -> nn.Linear:
    """A new Linear (with bias) equal to bn(linear(x)) in eval mode, computed in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise FoldError(f"{bn}: has no running statistics (track_running_stats=False), so eval mode "
                        "uses batch statistics and cannot be folded")
    if bn.num_features != linear.out_features:
        raise FoldError(f"{bn} follows a Linear with {linear.out_features} outputs: the channels are not "
                        "the Linear's output features")
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gain = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)  # affine=False: g=1, beta=0
    shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    bias = linear.bias.double() if linear.bias is not None else torch.zeros_like(mean)
    scale = gain / torch.sqrt(var + bn.eps)  # [out_features]

    folded = nn.Linear(linear.in_features, linear.out_features, bias=True,
                       device=linear.weight.device, dtype=linear.weight.dtype)
    folded.weight.copy_(linear.weight.double() * scale[:, None])
    folded.bias.copy_((bias - mean) * scale + shift)
    return folded


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each Linear -> BatchNorm pair in an nn.Sequential folded.

    The BatchNorm becomes nn.Identity, so indices and state_dict keys of the other layers stay put.
    The original model is not modified. Any BatchNorm left over (not right after a Linear in a
    Sequential) is an error: exporting it would put a BatchNormalization node in the graph.
    """
    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):  # a list: the loop replaces children
        if not isinstance(parent, nn.Sequential):
            continue
        for i in range(len(parent) - 1):
            if isinstance(parent[i], nn.Linear) and isinstance(parent[i + 1], _BatchNorm):
                parent[i] = fold_linear_batchnorm(parent[i], parent[i + 1])
                parent[i + 1] = nn.Identity()
    left = batchnorm_names(folded)
    if left:
        raise FoldError(f"cannot fold BatchNorm {', '.join(left)}: it does not directly follow a Linear "
                        "inside an nn.Sequential")
    return folded


def batchnorm_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]

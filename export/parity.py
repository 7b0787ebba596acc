"""Refuse to publish a model that does not compute what the trained one computes.

The written files (model.onnx through ONNX Runtime, model.pt2 through torch.export.load) are run on
every val context and compared with the unfused torch model in eval mode: the largest |delta logit|
and the val NLL. Checking the files, not the in-memory programs, is what makes the check worth it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ExportError
from namegen.contract import ONNX_CONDITION, ONNX_INPUT, ONNX_OUTPUT

MAX_ABS_LOGIT_DIFF = 1e-4
MAX_NLL_DIFF = 1e-5
CHUNK_ROWS = 65536


class ParityError(ExportError):
    pass


@dataclass
class ParityReport:
    onnx_max_abs_logit_diff: float
    onnx_val_nll: float
    pt2_max_abs_logit_diff: float
    pt2_val_nll: float
    torch_val_nll: float
    val_contexts: int

    def to_dict(self) -> dict:
        return asdict(self)


def _in_chunks(forward, contexts: torch.Tensor) -> torch.Tensor:
    return torch.cat([forward(contexts[i : i + CHUNK_ROWS]) for i in range(0, len(contexts), CHUNK_ROWS)])


def mean_nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Nats per character, summed in float64 like training.models.nll, so the numbers compare."""
    return F.cross_entropy(logits.double(), targets, reduction="sum").item() / max(len(targets), 1)


def _inputs(x: torch.Tensor, block_size: int | None) -> tuple[torch.Tensor, ...]:
    """A conditional model's columns (context, then conditions) as the files' two inputs."""
    if block_size is None or x.shape[1] == block_size:
        return (x,)
    return x[:, :block_size].contiguous(), x[:, block_size:].contiguous()


def onnx_logits(onnx_path: Path, contexts: torch.Tensor, block_size: int | None = None) -> torch.Tensor:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    run = lambda x: torch.from_numpy(session.run(  # noqa: E731
        [ONNX_OUTPUT], dict(zip((ONNX_INPUT, ONNX_CONDITION), (t.numpy() for t in _inputs(x, block_size)))))[0])
    return _in_chunks(run, contexts)


@torch.no_grad()
def pt2_logits(pt2_path: Path, contexts: torch.Tensor, block_size: int | None = None) -> torch.Tensor:
    program = torch.export.load(pt2_path).module()
    return _in_chunks(lambda x: program(*_inputs(x, block_size)), contexts)


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return (a.double() - b.double()).abs().max().item()  # NaN anywhere gives NaN, which fails the check


@torch.no_grad()
def check_parity(reference: nn.Module, onnx_path: Path, pt2_path: Path, contexts: torch.Tensor,
                 targets: torch.Tensor, block_size: int | None = None) -> ParityReport:
    """The report when both files match `reference` (eval mode); ParityError saying how, otherwise.
    contexts wider than block_size carry a conditional model's condition columns after the context."""
    reference.eval()
    expected = _in_chunks(reference, contexts)
    try:
        got_onnx = onnx_logits(onnx_path, contexts, block_size)
    except Exception as e:  # whatever ONNX Runtime raises for a file it cannot load or run
        raise ParityError(f"ONNX Runtime cannot run {onnx_path.name}: {type(e).__name__}: {e}") from None
    try:
        got_pt2 = pt2_logits(pt2_path, contexts, block_size)
    except Exception as e:
        raise ParityError(f"torch.export cannot run {pt2_path.name}: {type(e).__name__}: {e}") from None
    report = ParityReport(
        onnx_max_abs_logit_diff=_max_abs_diff(got_onnx, expected),
        onnx_val_nll=mean_nll(got_onnx, targets),
        pt2_max_abs_logit_diff=_max_abs_diff(got_pt2, expected),
        pt2_val_nll=mean_nll(got_pt2, targets),
        torch_val_nll=mean_nll(expected, targets),
        val_contexts=len(contexts),
    )
    problems = []
    for label, diff, val_nll in (("ONNX Runtime (model.onnx)", report.onnx_max_abs_logit_diff, report.onnx_val_nll),
                                 ("torch.export (model.pt2)", report.pt2_max_abs_logit_diff, report.pt2_val_nll)):
        if not diff <= MAX_ABS_LOGIT_DIFF:
            problems.append(f"{label} logits differ from torch by up to {diff:.3g} (limit {MAX_ABS_LOGIT_DIFF:g})")
        if not abs(val_nll - report.torch_val_nll) <= MAX_NLL_DIFF:
            problems.append(f"{label} val NLL {val_nll:.6f} vs torch {report.torch_val_nll:.6f} "
                            f"(limit {MAX_NLL_DIFF:g})")
    if problems:
        raise ParityError(f"parity check failed on {len(contexts)} val contexts: {'; '.join(problems)}")
    return report

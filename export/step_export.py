"""Wavenets with levels 1-2 as lookups, and their incremental step model (Paine et al. 2016, "Fast Wavenet
Generation"), model_step.onnx.

With BatchNorm folded, a level-l node is a pure function of its two children, the level-(l-1) nodes that
end 2**(l-1) characters apart. Level 1 depends on a character pair only, so level 2's pre-activation
W·[a; b] + c = W_a·a + W_b·b + c is two rows of tables over every pair (vocab**2 rows each, computed in
float64): the full-context graph (model.onnx, model.pt2) computes levels 1-2 that way, which leaves
block 8 one matrix product per row. From block 16 on, the step model does less again: the pairing is fixed
relative to the window's end, so when the window slides by one character only the newest node of each
level is new, and its left child was computed 2**(l-1) steps earlier. A row keeps, for each level l >= 3,
a ring of its last 2**(l-1) level-(l-1) nodes (serving/step_rings.py).

Step interface (namegen.contract): inputs `tail` int64 [batch, 4] (the context's last four characters) and
`left` float32 [batch, levels - 2, width] (the left child of each level >= 3, members side by side);
outputs `logits` float32 [batch, vocab] and `nodes` float32 [batch, levels - 2, width] (the new node of
levels 2 .. levels - 1, for the rings). Both graphs share the tables and compute each level with the same
ops, in the same order, on the same row shapes (3-D MatMul below the top level, 2-D Gemm at the top), so a
row's nodes have the same bits in both; serving checks bit-identity at load before it uses the step model.
Conditional models get neither (yet).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.export import Dim

from namegen import contract
from serving import step_rings as steps
from training.models import Ensemble, WaveNet

from .errors import ExportError
from .parity import MAX_ABS_LOGIT_DIFF, MAX_NLL_DIFF, mean_nll

EXAMPLE_ROWS = 2


class StepError(ExportError):
    pass


STEP_MIN_BLOCK = 16  # with levels 1-2 tabled, block 8's full graph computes one node per level, as a step would


def step_levels(model: nn.Module) -> list[nn.Module] | None:
    """The wavenets whose levels 1-2 can be tabled (one, or an ensemble's members; three levels at least,
    block_size >= 8), or None."""
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    if all(isinstance(m, WaveNet) and m.cfg.block_size >= 8 for m in members):
        return members
    return None


class _TabledWaveNet(nn.Module):
    """One folded wavenet with levels 1 and 2 as lookups: level 1 depends on a character pair only, so level
    2's pre-activation W·[a; b] + c = W_a·a + W_b·b + c is two rows of tables over every pair (27² rows
    each, computed in float64). The full-context graph and the step graph both compute level 2 this way,
    in the same order, and every level above with the same op on the same row shape, so a row's nodes
    have the same bits in both."""

    def __init__(self, folded: WaveNet, vocab_size: int):
        super().__init__()
        linears = [m for m in folded.hidden if isinstance(m, nn.Linear)]
        others = [m for m in folded.hidden if not isinstance(m, (nn.Linear, nn.Tanh, nn.Identity, nn.Dropout))
                  and type(m).__name__ != "FlattenConsecutive"]
        if others:
            raise StepError(f"cannot build a step model over {', '.join(type(m).__name__ for m in others)}")
        self.vocab_size, self.width = vocab_size, folded.cfg.n_hidden
        with torch.no_grad():
            every = torch.stack(torch.meshgrid(torch.arange(vocab_size), torch.arange(vocab_size), indexing="ij"),
                                dim=-1).reshape(-1, 2)  # [V*V, 2]: pair index a*V + b
            level1 = torch.tanh(F.linear(folded.embedding.weight.double()[every].flatten(1),
                                         linears[0].weight.double(), linears[0].bias.double()))  # [V*V, H]
            w2 = linears[1].weight.double()  # [H, 2 * level 1's width], which may differ from H (n_hidden_first)
            first = linears[0].out_features
            self.register_buffer("left_table", (level1 @ w2[:, :first].T).float())  # [V*V, H]
            self.register_buffer("right_table", (level1 @ w2[:, first:].T).float())
            self.register_buffer("bias2", linears[1].bias.detach().clone())
        self.upper, self.head = nn.ModuleList(linears[2:]), folded.head

    def level2(self, chars: torch.Tensor) -> torch.Tensor:
        """int64 [B, 4k] -> [B, k, H]: level 2 of each group of four characters."""
        pairs = chars[:, 0::2] * self.vocab_size + chars[:, 1::2]  # [B, 2k]
        pre = F.embedding(pairs[:, 0::2], self.left_table) + F.embedding(pairs[:, 1::2], self.right_table)
        return torch.tanh(pre + self.bias2)

    def _level(self, linear: nn.Linear, x: torch.Tensor, top: bool) -> torch.Tensor:
        # The top level is 2-D, as FlattenConsecutive leaves it (T == 1 squeezed); the others 3-D.
        return torch.tanh(linear(x.squeeze(1) if top else x))

    def full(self, context: torch.Tensor) -> torch.Tensor:  # int64 [B, T] -> logits [B, V]
        x = self.level2(context)  # [B, T/4, H]
        for i, linear in enumerate(self.upper):
            x = self._level(linear, x.reshape(x.shape[0], x.shape[1] // 2, -1), i == len(self.upper) - 1)
        return self.head(x)

    def step(self, tail: torch.Tensor, left: torch.Tensor):
        """tail [B, 4], left [B, L-2, H] -> logits [B, V], new nodes [B, L-2, H] of levels 2 .. L-1."""
        node = self.level2(tail)  # [B, 1, H]
        nodes = [node]
        for i, linear in enumerate(self.upper):
            top = i == len(self.upper) - 1
            node = self._level(linear, torch.cat([left[:, i : i + 1, :], node], dim=2), top)
            if not top:
                nodes.append(node)
        return self.head(node), nodes[0] if len(nodes) == 1 else torch.cat(nodes, dim=1)


class FullModel(nn.Module):
    """The full-context graph (model.onnx, model.pt2) of a wavenet or wavenet ensemble, levels 1-2 tabled."""

    def __init__(self, members: list[_TabledWaveNet]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0].full(context)
        return Ensemble.mix([m.full(context) for m in self.members])


class StepModel(nn.Module):
    """The step graph (model_step.onnx) of the same members (see the module docstring)."""

    def __init__(self, members: list[_TabledWaveNet]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.offsets = np.cumsum([0] + [m.width for m in members]).tolist()

    def forward(self, tail: torch.Tensor, left: torch.Tensor):
        if len(self.members) == 1:
            return self.members[0].step(tail, left)
        outputs = [member.step(tail, left[:, :, lo:hi])
                   for member, lo, hi in zip(self.members, self.offsets, self.offsets[1:])]
        return Ensemble.mix([out[0] for out in outputs]), torch.cat([out[1] for out in outputs], dim=2)


def tabled_models(folded: nn.Module, vocab_size: int) -> tuple[FullModel, StepModel | None] | None:
    """(full-context, step) graphs of a folded wavenet or wavenet ensemble sharing their tables, the step
    model only from STEP_MIN_BLOCK on (below, a step saves no multiply-add and costs the rings); None for
    other models (they are exported as they are)."""
    wavenets = step_levels(folded)
    if wavenets is None:
        return None
    members = [_TabledWaveNet(m, vocab_size).eval() for m in wavenets]
    step = StepModel(members).eval() if wavenets[0].cfg.block_size >= STEP_MIN_BLOCK else None
    return FullModel(members).eval(), step


def _to_onnx(module: nn.Module, examples: tuple, input_names: list[str], output_names: list[str]) -> onnx.ModelProto:
    """Dynamo export with a dynamic batch axis on every input, as onnx_export does for the full graph."""
    program = torch.export.export(module.eval(), examples,
                                  dynamic_shapes=tuple({0: Dim(contract.BATCH_AXIS, min=1)} for _ in examples))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        onnx_program = torch.onnx.export(program, input_names=input_names, output_names=output_names,
                                         dynamo=True, external_data=False, verbose=False)
    return onnx_program.model_proto


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    """Single-threaded, as serving runs it (backends.OnnxRuntimeBackend)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def step_inputs(step: StepModel) -> tuple[int, int]:
    """(levels - 2, width): the shape of `left` and `nodes` past the batch axis."""
    return len(step.members[0].upper), step.offsets[-1]


def write_step_onnx(step: StepModel, path: Path, metadata: dict[str, str]) -> None:
    levels, width = step_inputs(step)
    examples = (torch.zeros(EXAMPLE_ROWS, steps.TAIL, dtype=torch.long), torch.zeros(EXAMPLE_ROWS, levels, width))
    model = _to_onnx(step, examples, [contract.STEP_TAIL, contract.STEP_LEFT],
                     [contract.ONNX_OUTPUT, contract.STEP_NODES])
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, path, save_as_external_data=False)


def onnx_step_fn(path: Path):
    """serving.step_rings.StepFn running the written file in ONNX Runtime (single-threaded, as serving does)."""
    session = _session(onnx.load(path))

    def step(tail: np.ndarray, left: np.ndarray):
        return tuple(session.run([contract.ONNX_OUTPUT, contract.STEP_NODES],
                                 {contract.STEP_TAIL: tail, contract.STEP_LEFT: left}))
    return step


@torch.no_grad()
def check_step_parity(reference: nn.Module, step_path: Path, levels: int, width: int, sequences: list[list[int]],
                      contexts: torch.Tensor, targets: torch.Tensor) -> dict:
    """The written step model fed every val name character by character gives the full-context model's
    logits (eval mode) on every val context within parity's limits; StepError otherwise."""
    try:
        step = onnx_step_fn(step_path)
        padding = steps.padding_nodes(step, levels, width)
        got = torch.from_numpy(steps.run_sequences(step, padding, sequences))
    except Exception as e:  # whatever ONNX Runtime raises for a file it cannot load or run
        raise StepError(f"ONNX Runtime cannot run {step_path.name}: {type(e).__name__}: {e}") from None
    expected = torch.cat([reference.eval()(contexts[i : i + 65536]) for i in range(0, len(contexts), 65536)])
    diff = (got.double() - expected.double()).abs().max().item() if got.shape == expected.shape else float("inf")
    report = {"max_abs_logit_diff": diff, "val_nll": mean_nll(got, targets),
              "torch_val_nll": mean_nll(expected, targets), "val_contexts": len(contexts)}
    if not diff <= MAX_ABS_LOGIT_DIFF or not abs(report["val_nll"] - report["torch_val_nll"]) <= MAX_NLL_DIFF:
        raise StepError(f"step model parity failed on {len(contexts)} val contexts: logits differ from the "
                        f"full-context model by up to {diff:.3g} (limit {MAX_ABS_LOGIT_DIFF:g}), val NLL "
                        f"{report['val_nll']:.6f} vs {report['torch_val_nll']:.6f} (limit {MAX_NLL_DIFF:g})")
    return report


def export_step_model(step: StepModel | None, reference: nn.Module, folder: Path, val_words: list[list[int]],
                      val: tuple[torch.Tensor, torch.Tensor], metadata: dict[str, str]) -> dict | None:
    """Write folder/model_step.onnx and check its parity; the manifest's 'step_model' entry, or None for
    models without one. StepError refuses the export."""
    if step is None:
        return None
    levels, width = step_inputs(step)
    write_step_onnx(step, folder / contract.STEP_FILE, metadata)
    parity = check_step_parity(reference, folder / contract.STEP_FILE, levels, width, val_words, *val)
    return {"file": contract.STEP_FILE, "levels": levels, "width": width, "parity": parity}

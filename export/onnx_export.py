"""Write the folded model twice: model.pt2 (torch.export) and model.onnx (the serving contract).

The ONNX interface is the contract's (namegen.contract): input `context` int64 [batch, block_size], output
`logits` float32 [batch, vocab_size], batch dynamic, one self-contained file, string metadata_props.
Both files come from the same torch.export program, so they hold the same graph and weights.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn
from onnx.external_data_helper import uses_external_data
from torch.export import Dim, ExportedProgram

from namegen.contract import BATCH_AXIS, ONNX_CONDITION, ONNX_INPUT, ONNX_OUTPUT

from .errors import ExportError

EXAMPLE_ROWS = 2  # any size > 1: torch.export specialises dimensions of size 0 and 1


class WithConditionInput(nn.Module):
    """A conditional model (one input: context, then condition columns) with the contract's two inputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, context: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([context, condition], dim=1))  # [B, T] + [B, k] -> [B, T + k]


def export_program(folded: nn.Module, block_size: int, conditions: int = 0) -> ExportedProgram:
    """torch.export of the eval-mode folded model with a dynamic batch (>= 1) axis; with conditions, the
    second input `condition` int64 [batch, conditions]."""
    batch = Dim(BATCH_AXIS, min=1)
    example = torch.zeros(EXAMPLE_ROWS, block_size, dtype=torch.long)
    if conditions:
        program = torch.export.export(WithConditionInput(folded.eval()).eval(),
                                      (example, torch.zeros(EXAMPLE_ROWS, conditions, dtype=torch.long)),
                                      dynamic_shapes={ONNX_INPUT: {0: batch}, ONNX_CONDITION: {0: batch}})
    else:
        program = torch.export.export(folded.eval(), (example,), dynamic_shapes={ONNX_INPUT: {0: batch}})
    ops = [str(node.target) for node in program.graph.nodes if "batch_norm" in str(node.target)]
    if ops:
        raise ExportError(f"the exported program still holds batch norm ops ({', '.join(ops)})")
    return program


def write_pt2(program: ExportedProgram, path: Path) -> None:
    torch.export.save(program, path)


def write_onnx(program: ExportedProgram, path: Path, metadata: dict[str, str]) -> int:
    """Convert with the dynamo exporter, name the axes, attach metadata, save as one file. Returns the opset."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" is noise here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        inputs = [ONNX_INPUT, ONNX_CONDITION][: len(program.graph_signature.user_inputs)]
        onnx_program = torch.onnx.export(program, input_names=inputs, output_names=[ONNX_OUTPUT],
                                         dynamo=True, external_data=False, verbose=False)
    onnx_program.rename_axes({onnx_program.model.graph.inputs[0].shape[0]: BATCH_AXIS})
    model = onnx_program.model_proto
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    bn_nodes = batchnorm_nodes(model)
    if bn_nodes:
        raise ExportError(f"the ONNX graph holds BatchNormalization nodes ({', '.join(bn_nodes)}); folding failed")
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise ExportError("the ONNX model would need external data files; it must be a single file")
    onnx.save_model(model, path, save_as_external_data=False)
    return opset(model)


def opset(model: onnx.ModelProto) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def batchnorm_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of BatchNormalization nodes anywhere: main graph, subgraphs, and local functions."""
    found = []

    def walk(nodes):
        for node in nodes:
            if node.op_type == "BatchNormalization":
                found.append(node.name or "<unnamed>")
            for attribute in node.attribute:
                for graph in [attribute.g, *attribute.graphs]:
                    walk(graph.node)

    walk(model.graph.node)
    for function in model.functions:
        walk(function.node)
    return found


def read_metadata(path: Path) -> dict[str, str]:
    model = onnx.load(path, load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}

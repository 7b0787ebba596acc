"""Checkpoint -> registry version: load, (calibrate), fold, export, check parity, publish.

Nothing reaches the registry unless the written files pass the parity check; on any failure the
staged folder is deleted and LATEST is left as it was.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import onnxruntime
import torch

from training.checkpoint import CheckpointError, load_checkpoint
from training.data import Dataset
from training.models import count_parameters, nll

from . import onnx_export, registry
from .calibrate import calibrate_batchnorms
from .fold import fold_batchnorms
from .parity import check_parity

MANIFEST_FORMAT = "namegen.model"
MANIFEST_FORMAT_VERSION = 1


@dataclass
class Published:
    path: Path
    manifest: dict
    notes: list[str]  # things the user should know that did not stop the export


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dataset(checkpoint) -> Dataset:
    """The checkpoint's own word list and split, checked against the hash recorded at training time."""
    try:
        words = checkpoint.words()
    except OSError as e:
        raise CheckpointError(f"{checkpoint.path}: cannot read its word list ({e.strerror})") from None
    dataset = Dataset.from_words(words, checkpoint.meta["data"]["source"], checkpoint.vocab)
    if dataset.sha256 != checkpoint.meta["data"]["sha256"]:
        raise CheckpointError(f"{checkpoint.path}: words.txt is not the word list the model was trained on "
                              "(sha256 differs from checkpoint.json)")
    return dataset


def _onnx_metadata(name: str, version: str, meta: dict, metrics: dict) -> dict[str, str]:
    return {
        "name": name,
        "vocab": json.dumps(meta["vocab"], ensure_ascii=False),
        "block_size": str(meta["block_size"]),
        "model_type": meta["model_type"],
        "version": version,
        "data_sha256": meta["data"]["sha256"],
        "val_nll": repr(metrics["val_nll"]),
        "test_nll": repr(metrics["test_nll"]),
    }


def export_checkpoint(checkpoint_path: str | Path, registry_dir: str | Path, name: str | None = None,
                      calibrate: bool = False, keep: int | None = None) -> Published:
    if name is not None:
        registry.check_name(name)  # before the slow part
    checkpoint = load_checkpoint(checkpoint_path)
    root = registry.registry_root(registry_dir, create=True)
    meta = checkpoint.meta
    name = registry.check_name(name or meta["model_type"])
    dataset = _dataset(checkpoint)
    block_size = checkpoint.block_size
    notes = []
    if not meta.get("training", {}).get("finished", True):
        notes.append(f"{checkpoint.path}: training did not finish "
                     f"({meta['training']['completed_steps']} of {meta['training']['steps']} steps)")

    reference, metrics, calibrated = checkpoint.model.eval(), dict(meta["metrics"]), False
    if calibrate:
        reference, recalibrated = calibrate_batchnorms(reference, dataset.contexts("train", block_size)[0])
        if recalibrated:
            calibrated = True
            metrics = {f"{part}_nll": round(nll(reference, *dataset.contexts(part, block_size)), 6)
                       for part in ("train", "val", "test")}
        else:
            notes.append(f"--calibrate: {meta['model_type']} has no BatchNorm; exported as trained")
    folded = fold_batchnorms(reference)
    program = onnx_export.export_program(folded, block_size)

    staging = registry.stage(root, name)
    try:
        files = staging.path
        onnx_export.write_pt2(program, files / registry.PT2_FILE)
        opset = onnx_export.write_onnx(program, files / registry.ONNX_FILE,
                                       _onnx_metadata(name, staging.version, meta, metrics))
        training_names = sorted(set(dataset.words))
        (files / registry.TRAINING_NAMES_FILE).write_text("\n".join(training_names) + "\n", encoding="utf-8")
        parity = check_parity(reference, files / registry.ONNX_FILE, files / registry.PT2_FILE,
                              *dataset.contexts("val", block_size))
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_FORMAT_VERSION,
            "name": name,
            "version": staging.version,
            "created_at": staging.created_at,
            "model_type": meta["model_type"],
            "vocab": meta["vocab"],
            "block_size": block_size,
            "vocab_size": len(meta["vocab"]),
            "data_sha256": meta["data"]["sha256"],
            "parameters": meta["parameters"],
            "metrics": metrics,
            "parity": parity.to_dict(),
            "calibrated": calibrated,
            "checkpoint": str(Path(checkpoint_path).resolve()),
            "files": {f: _sha256(files / f) for f in (registry.ONNX_FILE, registry.PT2_FILE,
                                                        registry.TRAINING_NAMES_FILE)},
            "training_names": registry.TRAINING_NAMES_FILE,
            # Beyond the contract: what a reader may want when something looks off.
            "opset": opset,
            "io": {"input": onnx_export.INPUT_NAME, "output": onnx_export.OUTPUT_NAME,
                   "batch_axis": onnx_export.BATCH_AXIS},
            "num_training_names": len(training_names),
            "folded_parameters": count_parameters(folded),
            "checkpoint_metrics": meta["metrics"],
            "data_source": meta["data"]["source"],
            "training_finished": meta.get("training", {}).get("finished", True),
            "exported_with": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        }
        (files / registry.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")
    except BaseException:
        registry.discard(staging)
        raise
    path = registry.publish(staging, keep=keep)
    return Published(path, manifest, notes)

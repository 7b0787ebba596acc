"""Checkpoint -> registry version: load, (calibrate), fold, export, check parity, publish.

Nothing reaches the registry unless the written files pass the parity check; on any failure the
staged folder is deleted and LATEST is left as it was.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnxruntime
import torch

from namegen import contract
from training.checkpoint import CheckpointError, load_checkpoint
from training.data import Dataset
from training.models import count_parameters
from training.train import METRICS, measure_nll

from . import onnx_export, registry, step_export
from .calibrate import calibrate_batchnorms
from .errors import ExportError
from .fold import fold_batchnorms
from .parity import check_parity

@dataclass
class Published:
    path: Path
    manifest: dict
    notes: list[str]  # things the user should know that did not stop the export


def _dataset(checkpoint) -> Dataset:
    """The checkpoint's own word list and split, checked against the hash recorded at training time."""
    try:
        dataset = checkpoint.dataset()
    except OSError as e:
        raise CheckpointError(f"{checkpoint.path}: cannot read its word list ({e.strerror})") from None
    if dataset.sha256 != checkpoint.meta["data"]["sha256"]:
        raise CheckpointError(f"{checkpoint.path}: words.txt is not the word list the model was trained on "
                              "(sha256 differs from checkpoint.json)")
    return dataset


def _onnx_metadata(name: str, version: str, meta: dict, metrics: dict) -> dict[str, str]:
    """The contract's keys; a conditional model's conditions after them."""
    metadata = {
        "name": name,
        "vocab": json.dumps(meta["vocab"], ensure_ascii=False),
        "block_size": str(meta["block_size"]),
        "model_type": meta["model_type"],
        "version": version,
        "data_sha256": meta["data"]["sha256"],
        "val_nll": repr(metrics["val_nll"]),
        "test_nll": repr(metrics["test_nll"]),
    }
    assert tuple(metadata) == contract.ONNX_METADATA_KEYS
    if meta.get("conditions"):
        metadata[contract.ONNX_CONDITIONS_KEY] = json.dumps(meta["conditions"], ensure_ascii=False)
    return metadata


def export_checkpoint(checkpoint_path: str | Path, registry_dir: str | Path, name: str | None = None,
                      calibrate: bool = False, keep: int | None = None, tables: bool = True,
                      guidance: float | None = None) -> Published:
    """tables=False exports a wavenet as before pair tables and step models (the benchmarks' baseline).
    guidance: a conditional model's default guidance scale, the manifest's `guidance` (None: the contract's
    DEFAULT_GUIDANCE): requests that name a condition and no scale are guided by it."""
    if name is not None:
        registry.check_name(name)  # before the slow part
    if guidance is not None and not 0 <= guidance <= contract.MAX_GUIDANCE:
        raise ExportError(f"--guidance {guidance}: must be from 0 to {contract.MAX_GUIDANCE:g}")
    checkpoint = load_checkpoint(checkpoint_path)
    if guidance and not checkpoint.meta.get("conditions"):
        raise ExportError(f"--guidance: {checkpoint_path} was trained without conditions; there is nothing to guide")
    root = registry.registry_root(registry_dir, create=True)
    meta = checkpoint.meta
    name = registry.check_name(name or meta["model_type"])
    dataset = _dataset(checkpoint)
    notes = []
    if not meta.get("training", {}).get("finished", True):
        notes.append(f"{checkpoint.path}: training did not finish "
                     f"({meta['training']['completed_steps']} of {meta['training']['steps']} steps)")
    reference, metrics, calibrated = checkpoint.model.eval(), dict(meta["metrics"]), False
    if calibrate:
        reference, recalibrated = calibrate_batchnorms(reference, dataset.contexts("train", checkpoint.block_size)[0])
        calibrated = recalibrated > 0
        if not calibrated:
            notes.append(f"--calibrate: {meta['model_type']} has no BatchNorm; exported as trained")
    if calibrated or set(metrics) != set(METRICS):  # new weights, or saved mid-training (its val NLL only)
        metrics = measure_nll(reference, dataset, checkpoint.block_size)
    staging = registry.stage(root, name)
    try:
        manifest = _write_version(staging, checkpoint, dataset, reference, metrics, tables)
        manifest.update(calibrated=calibrated, checkpoint=str(Path(checkpoint_path).resolve()))
        if meta.get("conditions"):
            manifest["guidance"] = contract.DEFAULT_GUIDANCE if guidance is None else guidance
        contract.validate_manifest(manifest, f"{name}/{staging.version}")  # what serving will check
        (staging.path / contract.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                                           encoding="utf-8")
    except BaseException:
        registry.discard(staging)
        raise
    return Published(registry.publish(staging, keep=keep), manifest, notes)


def _write_version(staging: registry.Staging, checkpoint, dataset: Dataset, reference: torch.nn.Module,
                   metrics: dict, tables: bool = True) -> dict:
    """Fold, write model.pt2, model.onnx and the training names into the staging folder, check their parity
    against the unfolded model; returns the manifest (without the export options)."""
    meta, block_size, files = checkpoint.meta, checkpoint.block_size, staging.path
    folded = fold_batchnorms(reference)
    conditions = len(meta.get("conditions", []))
    # Unconditional wavenets: levels 1-2 as pair tables, in the full graph and the step model alike (step_export.py).
    tabled = step_export.tabled_models(folded, len(meta["vocab"])) if tables and not conditions else None
    program = onnx_export.export_program(tabled[0] if tabled else folded, block_size, conditions)
    onnx_export.write_pt2(program, files / contract.PT2_FILE)
    opset = onnx_export.write_onnx(program, files / contract.ONNX_FILE,
                                   _onnx_metadata(staging.name, staging.version, meta, metrics))
    training_names = sorted(set(dataset.words))
    (files / contract.TRAINING_NAMES_FILE).write_text("\n".join(training_names) + "\n", encoding="utf-8")
    parity = check_parity(reference, files / contract.ONNX_FILE, files / contract.PT2_FILE,
                          *dataset.contexts("val", block_size), block_size=block_size)
    step_model = step_export.export_step_model(
        tabled and tabled[1], reference, files, [dataset.vocab.encode(w) for w in dataset.split.val],
        dataset.contexts("val", block_size), _onnx_metadata(staging.name, staging.version, meta, metrics))
    return {
        "format": contract.MANIFEST_FORMAT,
        "format_version": contract.MANIFEST_FORMAT_VERSION,
        "name": staging.name,
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
        "files": {f: contract.sha256_file(files / f)
                  for f in (contract.ONNX_FILE, contract.PT2_FILE, contract.TRAINING_NAMES_FILE)
                  + ((contract.STEP_FILE,) if step_model else ())},
        "training_names": contract.TRAINING_NAMES_FILE,
        **({"step_model": step_model} if step_model else {}),
        # Beyond the contract: what a reader may want when something looks off.
        "opset": opset,
        "io": {"input": contract.ONNX_INPUT, "output": contract.ONNX_OUTPUT, "batch_axis": contract.BATCH_AXIS},
        "num_training_names": len(training_names),
        "folded_parameters": count_parameters(folded),
        "checkpoint_metrics": meta["metrics"],
        "data_source": meta["data"]["source"],
        "training_finished": meta.get("training", {}).get("finished", True),
        "exported_with": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        **{key: meta[key] for key in ("conditions", "condition_prior") if meta.get("conditions")},
    }

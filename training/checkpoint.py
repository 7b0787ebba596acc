"""The checkpoint folder: model.safetensors + checkpoint.json (+ the word list, history, diagnostics, resume state).

checkpoint.json holds everything needed to rebuild the model without the training code's defaults:
model config, vocabulary, block size, split seed, sha256 of the word list, NLLs and wall time.
Each file is replaced atomically, weights before the JSON that describes them.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .data import Vocab
from .models import ModelConfig, build_model

FORMAT = "namegen.checkpoint"
FORMAT_VERSION = 1
META_FILE = "checkpoint.json"
WEIGHTS_FILE = "model.safetensors"
WORDS_FILE = "words.txt"  # the full word list, so eval and export need no --data
HISTORY_FILE = "history.json"
DIAGNOSTICS_FILE = "diagnostics.json"  # lecture 3's training diagnostics (training/diagnostics.py)
TRAIN_STATE_FILE = "train_state.pt"  # optimizer, generator and step for --resume


class CheckpointError(ValueError):
    pass


def atomic_write(path: Path, write) -> None:
    """Write through `write(tmp_path)` into a temp file beside `path`, fsync, then rename into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@dataclass
class Checkpoint:
    path: Path
    meta: dict
    model: nn.Module
    vocab: Vocab

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def words(self) -> list[str]:
        return (self.path / WORDS_FILE).read_text(encoding="utf-8").splitlines()

    def dataset(self):
        """The word list (a conditional model's records) it was trained on, split as in training."""
        from .conditions import dataset_from_lines

        return dataset_from_lines(self.words(), self.meta["data"]["source"], self.vocab, self.meta)


def save_checkpoint(out_dir: Path, model: nn.Module, meta: dict, words: list[str] | None = None,
                    history: dict | None = None, train_state: dict | None = None,
                    diagnostics: dict | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out_dir / WEIGHTS_FILE, lambda tmp: save_file(state, tmp))
    if words is not None and not (out_dir / WORDS_FILE).exists():
        atomic_write_text(out_dir / WORDS_FILE, "\n".join(words) + "\n")
    if history is not None:
        atomic_write_text(out_dir / HISTORY_FILE, json.dumps(history))
    if diagnostics is not None:
        atomic_write_text(out_dir / DIAGNOSTICS_FILE, json.dumps(diagnostics, separators=(",", ":")))
    if train_state is not None:
        atomic_write(out_dir / TRAIN_STATE_FILE, lambda tmp: torch.save(train_state, tmp))
    full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta,
                 "model_config": model.cfg.to_dict()}
    atomic_write_text(out_dir / META_FILE, json.dumps(full_meta, indent=2) + "\n")


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder (no such directory)")
    if not meta_path.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path}: not a checkpoint folder (needs {META_FILE} and {WEIGHTS_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a namegen checkpoint (format is not {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r}")
    return meta


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    meta = read_meta(path)
    try:
        cfg = ModelConfig.from_dict(meta["model_config"])
        model = build_model(cfg)
        model.load_state_dict(load_file(path / WEIGHTS_FILE))
    except Exception as e:  # a damaged or mismatched checkpoint, whatever the library raised
        raise CheckpointError(f"{path}: cannot load the model ({type(e).__name__}: {e})") from None
    model.eval()
    return Checkpoint(path, meta, model, Vocab(tuple(meta["vocab"])))


def load_train_state(path: Path) -> dict:
    state_path = path / TRAIN_STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{path}: has no {TRAIN_STATE_FILE} to resume from")
    return torch.load(state_path, weights_only=True)


def load_history(path: Path) -> dict:
    history_path = path / HISTORY_FILE
    return json.loads(history_path.read_text()) if history_path.is_file() else {"train": [], "val": []}


def load_diagnostics(path: Path) -> dict | None:
    """diagnostics.json of a checkpoint folder, None when the run recorded none."""
    diagnostics_path = path / DIAGNOSTICS_FILE
    if not diagnostics_path.is_file():
        return None
    try:
        diagnostics = json.loads(diagnostics_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{diagnostics_path}: not valid JSON ({e})") from None
    if not isinstance(diagnostics, dict) or not isinstance(diagnostics.get("records"), list):
        raise CheckpointError(f"{diagnostics_path}: not a diagnostics file (no list of records)")
    return diagnostics

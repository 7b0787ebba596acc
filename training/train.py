"""The training loop: plain, top to bottom, resumable, bit-reproducible on CPU for a given seed."""
from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint as ckpt
from .data import SPLIT_SEED, Dataset
from .diagnostics import Recorder
from .models import GRADIENT_FREE, ModelConfig, build_model, count_parameters, nll


@dataclass
class TrainConfig:
    steps: int
    batch_size: int  # 0: the whole training split every step (full-batch gradient descent)
    lr: float
    optimizer: str  # "sgd" or "adamw"
    lr_final_ratio: float = 0.05  # cosine decay from lr to lr * lr_final_ratio
    weight_decay: float = 0.0  # AdamW's decoupled decay
    l2: float = 0.0  # the lecture's penalty l2 * mean(W**2) added to the loss (bigram-neural)
    seed: int = 1337
    eval_every: int = 0  # 0: ten evaluations (and checkpoints) over the run
    diagnostics_every: int = 100  # lecture 3's diagnostics on every k-th step and the last; 0: none

    def lr_at(self, step: int) -> float:
        progress = step / max(self.steps - 1, 1)
        return self.lr * (self.lr_final_ratio + (1 - self.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    @property
    def eval_interval(self) -> int:
        return self.eval_every or max(self.steps // 10, 1)


# Defaults per model; the CLI overrides any of them. The mlp's beat lecture 3 (see README).
TRAIN_DEFAULTS: dict[str, TrainConfig] = {
    "bigram-counts": TrainConfig(steps=0, batch_size=0, lr=0.0, optimizer="none"),
    "bigram-neural": TrainConfig(steps=400, batch_size=0, lr=200.0, optimizer="sgd", lr_final_ratio=0.2, l2=0.001,
                                 diagnostics_every=10),
    "mlp": TrainConfig(steps=30000, batch_size=128, lr=3e-3, optimizer="adamw", weight_decay=0.05),
    "wavenet": TrainConfig(steps=60000, batch_size=128, lr=3e-3, optimizer="adamw", weight_decay=0.1),
}


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a resumable checkpoint."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def _make_optimizer(model, tc: TrainConfig) -> torch.optim.Optimizer:
    if tc.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=tc.lr)
    # Decay matrices only: embeddings, biases and BatchNorm's gain/shift are left alone.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith("embedding") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr)


METRICS = ("train_nll", "val_nll", "test_nll")


def measure_nll(model, data: Dataset, block_size: int) -> dict:
    """A finished model's metrics: its mean NLL on each part of the split."""
    return {name: round(nll(model, *data.contexts(name.removesuffix("_nll"), block_size)), 6) for name in METRICS}


def _model_and_data(model, data: Dataset) -> dict:
    return {
        "model_type": model.cfg.model_type,
        "vocab": list(data.vocab.chars),
        "block_size": model.cfg.block_size,
        "parameters": count_parameters(model),
        "split": {"seed": SPLIT_SEED, "fractions": [0.8, 0.1, 0.1], "sizes": data.split.sizes()},
        "data": {"source": data.source, "sha256": data.sha256, "num_words": len(data.words)},
        **data.condition_meta(),
    }


def _meta(model, data: Dataset, tc: TrainConfig, step: int, wall_time: float, finished: bool,
          objective=None, val_nll: float | None = None) -> dict:
    """val_nll: a checkpoint saved mid-training records only the val NLL its evaluation measured; the train
    split's is 8 times as costly, and on 359,563 records took minutes at each of the ten saves."""
    described = {} if objective is None else {objective.kind: objective.describe()}
    return {
        **_model_and_data(model, data),
        "training": {**asdict(tc), "completed_steps": step, "finished": finished, "wall_time_s": round(wall_time, 3),
                     **described},
        "metrics": measure_nll(model, data, model.cfg.block_size) if finished else {"val_nll": round(val_nll, 6)},
    }


def ensemble_meta(model, data: Dataset, members: list[dict]) -> dict:
    """checkpoint.json of an ensemble: the members' training records instead of one loop's."""
    wall = [m["training"]["wall_time_s"] for m in members]
    return {
        **_model_and_data(model, data),
        "training": {"members": [{"model_type": m["model_type"], "seed": m["training"].get("seed"),
                                  "wall_time_s": m["training"]["wall_time_s"], "metrics": m["metrics"]}
                                 for m in members],
                     "finished": all(m["training"]["finished"] for m in members),
                     "wall_time_s": round(sum(wall), 3), "wall_time_parallel_s": round(max(wall), 3)},
        "metrics": measure_nll(model, data, model.cfg.block_size),
    }


class _StopFlag:
    """First Ctrl-C asks the loop to stop after the current step; a second one aborts at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)


def _fit_without_gradients(model, tc: TrainConfig, data: Dataset, out_dir: Path, Xtr, Ytr) -> dict:
    start = time.perf_counter()
    model.fit(Xtr, Ytr)
    meta = _meta(model, data, replace(tc, steps=0), 0, time.perf_counter() - start, finished=True)
    ckpt.save_checkpoint(out_dir, model, meta, words=data.lines())
    return meta


def _restore(out_dir: Path, model, optimizer, generator: torch.Generator,
             recorder: Recorder) -> tuple[int, float, dict]:
    """--resume: weights, optimizer, both generators, diagnostics; returns step, wall time so far, loss history."""
    state = ckpt.load_train_state(out_dir)
    model.load_state_dict(ckpt.load_checkpoint(out_dir).model.state_dict())
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])  # dropout draws from the global generator
    diagnostics = ckpt.load_diagnostics(out_dir) or {"records": []}
    # Only what the saved state had seen: a later write of these files may have outlived its own state.
    recorder.records = [r for r in diagnostics["records"] if r["step"] < state["step"]]
    return state["step"], state["wall_time_s"], ckpt.load_history(out_dir)


def _train_step(model, optimizer, recorder: Recorder, tc: TrainConfig, xb, yb, step: int, lr: float,
                objective=None, ix=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One update at learning rate lr; the recorder's calls do nothing but on its recording steps."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    # An objective's own forward (finetune's explain loss) runs before the recorder watches the rows' one.
    extra = objective.extra_loss(model, generator) if hasattr(objective, "extra_loss") else None
    recorder.start(step, lr)
    logits = model(xb)
    loss = F.cross_entropy(logits, yb) if objective is None else objective.loss(logits, yb, ix)
    if extra is not None:
        loss = loss + extra
    if tc.l2:
        loss = loss + tc.l2 * model.regularisation()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    recorder.gradients_ready()
    optimizer.step()
    recorder.update_applied()
    return loss


def _initial_model(model_cfg: ModelConfig, generator: torch.Generator, init_state: dict | None):
    model = build_model(model_cfg, generator=generator)
    if init_state is not None:
        model.load_state_dict(init_state)
    return model


def train(model_cfg: ModelConfig, tc: TrainConfig, data: Dataset, out_dir: Path, resume: bool = False,
          progress: bool = True, objective=None, init_state: dict | None = None) -> dict:
    """Train, write the checkpoint folder, return its metadata. Raises Interrupted on Ctrl-C. An objective
    (distill.Distillation, finetune.Finetune) brings its own training contexts, loss and metadata; init_state:
    weights to start from instead of the seeded initialisation (fine-tuning)."""
    generator = torch.Generator().manual_seed(tc.seed)
    torch.manual_seed(tc.seed)
    model = _initial_model(model_cfg, generator, init_state)
    block_size = model.cfg.block_size
    Xtr, Ytr = data.contexts("train", block_size) if objective is None else objective.train_set
    Xval, Yval = data.contexts("val", block_size)
    if model_cfg.model_type in GRADIENT_FREE:
        return _fit_without_gradients(model, tc, data, out_dir, Xtr, Ytr)

    optimizer = _make_optimizer(model, tc)
    recorder = Recorder(model, tc.diagnostics_every, last_step=tc.steps - 1)
    step, wall_before, history = 0, 0.0, {"train": [], "val": []}
    if resume:
        step, wall_before, history = _restore(out_dir, model, optimizer, generator, recorder)

    def save(finished: bool, val_nll: float | None = None) -> dict:
        wall = wall_before + time.perf_counter() - started
        meta = _meta(model, data, tc, step, wall, finished, objective, val_nll)
        train_state = {"optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                       "torch_rng": torch.get_rng_state(),
                       "step": step, "wall_time_s": wall}
        ckpt.save_checkpoint(out_dir, model, meta, words=data.lines(), history=history, train_state=train_state,
                             diagnostics=recorder.to_json() if tc.diagnostics_every else None)
        return meta

    started = time.perf_counter()
    model.train()
    bar = tqdm(total=tc.steps, initial=step, desc=model_cfg.model_type, unit="step", disable=not progress,
               mininterval=0.5, dynamic_ncols=True)
    with _StopFlag() as stop:
        while step < tc.steps:
            lr = tc.lr_at(step)
            if tc.batch_size:
                ix = torch.randint(0, len(Xtr), (tc.batch_size,), generator=generator)
                xb, yb = Xtr[ix], Ytr[ix]
            else:
                ix, xb, yb = None, Xtr, Ytr
            loss = _train_step(model, optimizer, recorder, tc, xb, yb, step, lr, objective, ix, generator)
            step += 1
            if step % 100 == 0 or step in (1, tc.steps) or not tc.batch_size:
                history["train"].append([step, round(loss.item(), 5)])
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2g}", refresh=False)
            bar.update(1)
            if step % tc.eval_interval == 0 and step < tc.steps:
                val = nll(model, Xval, Yval)
                history["val"].append([step, round(val, 5)])
                bar.write(f"step {step}: val {val:.4f}", file=sys.stderr)
                save(finished=False, val_nll=val)
            if stop.requested:
                bar.close()
                save(finished=False, val_nll=nll(model, Xval, Yval))
                raise Interrupted(step)
    bar.close()
    history["val"].append([step, round(nll(model, Xval, Yval), 5)])
    return save(finished=True)

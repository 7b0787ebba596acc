"""One served model version: its manifest, vocabulary, training names and runner, loaded and validated."""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from namegen.contract import ContractError, Manifest, read_manifest, verify_files

from .backends import WEIGHTS_FILE, BackendError, make_backend
from .request import InvalidRequest
from .runner import ModelRunner
from .step_cache import load_step_model
from .sampler import log_softmax
from .settings import Settings

log = logging.getLogger("namegen.model")
SANITY_NAMES = 64  # training names scored before a version may serve


@dataclass
class LoadedModel:
    name: str
    version: str
    manifest: Manifest
    runner: ModelRunner
    training_names: frozenset[str]
    vocab: tuple[str, ...] = field(init=False)
    block_size: int = field(init=False)
    stoi: dict[str, int] = field(init=False)
    codepoints: np.ndarray = field(init=False)  # [vocab]: decodes token arrays in one pass (see `encoding`)
    encoding: str = field(init=False)  # latin-1 over uint8 code points when every character fits, else UTF-32
    conditions: tuple[tuple[str, tuple[str, ...]], ...] = field(init=False)  # a conditional model's, else ()
    _users: threading.Condition = field(init=False, default_factory=threading.Condition)
    _in_use: int = field(init=False, default=0)  # scoring forwards running now

    def __post_init__(self):
        self.vocab = self.manifest.vocab
        self.block_size = self.manifest.block_size
        self.stoi = {ch: i for i, ch in enumerate(self.vocab)}
        narrow = all(ord(ch) < 256 for ch in self.vocab)
        self.codepoints = np.array([ord(ch) for ch in self.vocab], dtype=np.uint8 if narrow else np.uint32)
        self.encoding = "latin-1" if narrow else "utf-32-le"
        self.conditions = self.manifest.conditions

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, field: tuple) -> list[int]:
        """Token ids of `text`; InvalidRequest at `field` listing the characters the model does not know."""
        try:
            ids = [self.stoi[ch] for ch in text]
        except KeyError:
            ids = []
        if len(ids) != len(text) or 0 in ids:  # the boundary token is no character of a name
            unknown = sorted({ch for ch in text if ch not in self.stoi or ch == self.vocab[0]})
            raise InvalidRequest(field, f"characters not in the vocabulary of model {self.name!r}: "
                                        + ", ".join(repr(ch) for ch in unknown), text)
        return ids

    def condition_indices(self, pairs: tuple[tuple[str, str], ...]) -> tuple[int, ...]:
        """Index per condition (0: any) for (condition, value) pairs; InvalidRequest at the pair's field
        listing what the model allows. An unconditional model gets ()."""
        names = [name for name, _ in self.conditions]
        chosen = dict(pairs)
        for name, value in pairs:
            if name not in names:
                allowed = f"its conditions: {', '.join(names)}" if names else \
                    "it was trained without conditions, so it allows none; omit the field"
                raise InvalidRequest(condition_field(name), f"model {self.name!r} has no condition {name!r} ({allowed})",
                                     value)
            values = self.conditions[names.index(name)][1]
            if value not in values:
                raise InvalidRequest(condition_field(name), f"{name} {value!r} is not among the values model "
                                                            f"{self.name!r} was trained on: {', '.join(values)}", value)
        return tuple(values.index(chosen[name]) + 1 if name in chosen else 0 for name, values in self.conditions)

    def contexts(self, encoded: list[list[int]], condition: tuple[int, ...] = ()) -> tuple[np.ndarray, ...]:
        """Scoring inputs: contexts int64 [N, T (+ conditions)], targets int64 [N], and each name's row count
        (len + 1). A conditional model's rows end with `condition`, or "any" (0) for each when it is ()."""
        t = self.block_size
        rows, targets, lengths = [], [], []
        for name_ids in encoded:
            ids = name_ids + [0]
            padded = [0] * t + ids
            rows.extend(padded[i:i + t] for i in range(len(ids)))
            targets.extend(ids)
            lengths.append(len(ids))
        context = np.array(rows, dtype=np.int64).reshape(-1, t)
        if self.conditions:
            columns = np.array(condition or (0,) * len(self.conditions), dtype=np.int64)
            context = np.concatenate([context, np.broadcast_to(columns, (len(context), len(columns)))], axis=1)
        return context, np.array(targets, dtype=np.int64), np.array(lengths)

    def token_logp(self, names: list[str], condition: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One batched forward: (log p of every character and end token float64 [N], targets, lengths).
        InvalidRequest at ("names", i) for a name with characters outside the vocabulary."""
        context, targets, lengths = self.contexts([self.encode(name, ("names", i)) for i, name in enumerate(names)],
                                                  condition)
        return self.target_logp(context, targets), targets, lengths

    def target_logp(self, context: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """log p(target | context) float64 [N] in one forward."""
        with self._users:  # a reload must not close the backend under a score in flight
            self._in_use += 1
        try:
            logp = log_softmax(self.runner.logits(context))
        finally:
            with self._users:
                self._in_use -= 1
                self._users.notify_all()
        return logp[np.arange(len(targets)), targets]

    def close(self, timeout: float = 60) -> None:
        with self._users:
            self._users.wait_for(lambda: self._in_use == 0, timeout)
        self.runner.close()


def condition_field(name: str) -> tuple:
    """Where a condition sits in an API body: sex and decade are fields of their own, others in `conditions`."""
    return (name,) if name in ("sex", "decade") else ("conditions", name)


def _check_sanity(model: LoadedModel) -> None:
    """A smoke forward and the NLL of a few training names: finite, shaped, and better than uniform."""
    logits = model.runner.backend.forward(np.zeros((1, model.block_size + len(model.conditions)), dtype=np.int64))
    if logits.shape != (1, model.vocab_size):
        raise ContractError(f"{model.name}/{model.version}: logits shape {logits.shape}, "
                            f"expected (1, {model.vocab_size})")
    names = sorted(model.training_names)[:: max(len(model.training_names) // SANITY_NAMES, 1)][:SANITY_NAMES]
    if names:
        try:
            logp, _, _ = model.token_logp(names)
        except InvalidRequest as e:
            raise ContractError(f"{model.name}/{model.version}: a training name does not fit the vocabulary ({e})")
        mean_nll = float(-logp.mean())
        if not math.isfinite(mean_nll) or mean_nll >= math.log(model.vocab_size):
            raise ContractError(f"{model.name}/{model.version}: NLL {mean_nll:.3f} on training names is no better "
                                f"than uniform ({math.log(model.vocab_size):.3f}); refusing the version")


def load_version(settings: Settings, name: str, version: str) -> LoadedModel:
    """Load and validate; raises ContractError or BackendError and leaves nothing running on failure."""
    version_dir = Path(settings.registry) / name / version
    if not version_dir.is_dir():
        raise ContractError(f"{version_dir}: no such version folder")
    if version_dir.is_symlink() or version_dir.resolve().parent != version_dir.parent.resolve():
        raise ContractError(f"{version_dir}: a link, not a version folder of {name}")
    manifest = read_manifest(version_dir)
    names_file = manifest.training_names
    # The step model is ONNX and checked against ONNX Runtime's forward on the CPU.
    step_spec = manifest.step_model if settings.step_cache and not manifest.conditions and \
        (settings.backend, settings.device) == ("onnxruntime", "cpu") else None
    verify_files(version_dir, manifest, [WEIGHTS_FILE[settings.backend]] + ([names_file] if names_file else [])
                 + ([step_spec.file] if step_spec else []))
    training_names = frozenset()
    if names_file:
        try:
            training_names = frozenset((version_dir / names_file).read_text(encoding="utf-8").splitlines())
        except UnicodeDecodeError as e:
            raise ContractError(f"{version_dir / names_file}: not UTF-8 text ({e.reason})") from None
    backend = make_backend(settings.backend, version_dir, manifest.block_size, settings.forward_chunk_rows,
                           settings.threads, settings.device, len(manifest.conditions))
    try:
        runner = ModelRunner(backend, len(manifest.vocab), manifest.block_size,
                             int(settings.logits_table_mb * 2**20), tuple(len(v) + 1 for _, v in manifest.conditions))
        if runner.table is None:
            runner.steps = load_step_model(version_dir, step_spec, backend, len(manifest.vocab), manifest.block_size)
        model = LoadedModel(name, version, manifest, runner, training_names)
        _check_sanity(model)
    except Exception as e:
        backend.close()
        if isinstance(e, (ContractError, BackendError)):
            raise
        raise ContractError(f"{name}/{version}: smoke forward failed ({type(e).__name__}: {e})") from None
    return model

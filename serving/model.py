"""One served model version: its manifest, vocabulary, backend and training names, loaded and validated."""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import BackendError, ChunkedBackend, make_backend
from .registry import ArtifactError, read_manifest, verify_files
from .sampler import Distribution, DistributionTable, log_softmax, sample_step
from .settings import Settings

log = logging.getLogger("namegen.model")
MAX_VOCAB = 32767  # the engine keeps tokens as int16
SANITY_NAMES = 64  # training names scored before a version may serve


@dataclass
class LoadedModel:
    name: str
    version: str
    manifest: dict
    backend: ChunkedBackend
    training_names: frozenset[str]
    vocab: tuple[str, ...] = field(init=False)
    block_size: int = field(init=False)
    stoi: dict[str, int] = field(init=False)
    codepoints: np.ndarray = field(init=False)  # [vocab]: decodes token arrays in one pass (see `encoding`)
    encoding: str = field(init=False)  # latin-1 over uint8 code points when every character fits, else UTF-32
    distributions: DistributionTable | None = field(init=False, default=None)  # see use_table
    _users: threading.Condition = field(init=False, default_factory=threading.Condition)
    _in_use: int = field(init=False, default=0)  # scoring forwards running now

    def __post_init__(self):
        self.vocab = tuple(self.manifest["vocab"])
        if len(self.vocab) > MAX_VOCAB:
            raise ArtifactError(f"{self.name}/{self.version}: vocabulary of {len(self.vocab)} exceeds {MAX_VOCAB}")
        self.block_size = int(self.manifest["block_size"])
        self.stoi = {ch: i for i, ch in enumerate(self.vocab)}
        narrow = all(ord(ch) < 256 for ch in self.vocab)
        self.codepoints = np.array([ord(ch) for ch in self.vocab], dtype=np.uint8 if narrow else np.uint32)
        self.encoding = "latin-1" if narrow else "utf-32-le"

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def unknown_chars(self, text: str) -> list[str]:
        return sorted({ch for ch in text if ch not in self.stoi or ch == self.vocab[0]})

    def contexts(self, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scoring inputs: contexts int64 [N, T], targets int64 [N], and each name's row count (len + 1)."""
        t = self.block_size
        rows, targets, lengths = [], [], []
        for name in names:
            ids = [self.stoi[ch] for ch in name] + [0]
            padded = [0] * t + ids
            rows.extend(padded[i:i + t] for i in range(len(ids)))
            targets.extend(ids)
            lengths.append(len(ids))
        context = np.array(rows, dtype=np.int64).reshape(-1, t)
        return context, np.array(targets, dtype=np.int64), np.array(lengths)

    def token_logp(self, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One batched forward: (log p of every character and end token float64 [N], targets, lengths)."""
        context, targets, lengths = self.contexts(names)
        with self._users:  # a reload must not close the backend under a score in flight
            self._in_use += 1
        try:
            logp = log_softmax(self.backend.forward(context))
        finally:
            with self._users:
                self._in_use -= 1
                self._users.notify_all()
        return logp[np.arange(len(targets)), targets], targets, lengths

    def use_table(self, seed: int = 0) -> bool:
        """Precompute the sampler's view of every context when the backend tabulated its logits, after
        checking that sampling from it gives bit for bit what sampling from computed logits gives."""
        if self.backend.table is None:
            return False
        table = DistributionTable(self.backend.table)
        rng = np.random.default_rng(seed)
        rows = 4 * self.backend.chunk_rows
        index = rng.integers(0, len(self.backend.table), rows)
        params = (rng.random(rows), rng.choice([1.0, 1.0, 0.5, 2.0, 0.0], rows), rng.choice([0, 0, 3], rows),
                  rng.random(rows) < 0.8, np.where(rng.random(rows) < 0.1, 1, -1))
        looked_up = sample_step(table.rows(index), *params)
        computed = sample_step(Distribution(self.backend.table[index]), *params)
        if not all(np.array_equal(a, b) for a, b in zip(looked_up, computed)):
            log.warning("%s/%s: sampling from the precomputed table differs from sampling from logits; "
                        "computing distributions every step", self.name, self.version)
            return False
        self.distributions = table
        return True

    def close(self, timeout: float = 60) -> None:
        with self._users:
            self._users.wait_for(lambda: self._in_use == 0, timeout)
        self.backend.close()


def _check_sanity(model: LoadedModel) -> None:
    """A smoke forward and the NLL of a few training names: finite, shaped, and better than uniform."""
    logits = model.backend.forward(np.zeros((1, model.block_size), dtype=np.int64))
    if logits.shape != (1, model.vocab_size):
        raise ArtifactError(f"{model.name}/{model.version}: logits shape {logits.shape}, "
                            f"expected (1, {model.vocab_size})")
    names = sorted(model.training_names)[:: max(len(model.training_names) // SANITY_NAMES, 1)][:SANITY_NAMES]
    if names:
        logp, _, _ = model.token_logp(names)
        mean_nll = float(-logp.mean())
        if not math.isfinite(mean_nll) or mean_nll >= math.log(model.vocab_size):
            raise ArtifactError(f"{model.name}/{model.version}: NLL {mean_nll:.3f} on training names is no better "
                                f"than uniform ({math.log(model.vocab_size):.3f}); refusing the version")


def load_version(settings: Settings, name: str, version: str) -> LoadedModel:
    """Load and validate; raises ArtifactError or BackendError and leaves nothing running on failure."""
    version_dir = Path(settings.registry) / name / version
    if not version_dir.is_dir():
        raise ArtifactError(f"{version_dir}: no such version folder")
    manifest = read_manifest(version_dir)
    weights = "model.pt2" if settings.backend == "torch" else "model.onnx"
    names_file = manifest.get("training_names")
    verify_files(version_dir, manifest, [weights] + ([names_file] if names_file else []))
    training_names = frozenset()
    if names_file:
        training_names = frozenset((version_dir / names_file).read_text(encoding="utf-8").splitlines())
    backend = make_backend(settings.backend, version_dir, int(manifest["block_size"]), settings.forward_chunk_rows,
                           settings.threads, settings.device)
    model = LoadedModel(name, version, manifest, backend, training_names)
    try:
        backend.check_shape_invariance(model.vocab_size)
        # The budget covers the logits and the sampler's precomputed view of them, about 8x as much.
        view = model.vocab_size ** model.block_size * DistributionTable.bytes_per_context(model.vocab_size)
        if backend.tabulate(model.vocab_size, int(settings.logits_table_mb * 2**20) - view):
            model.use_table()
        _check_sanity(model)
    except Exception as e:
        model.close()
        if isinstance(e, (ArtifactError, BackendError)):
            raise
        raise ArtifactError(f"{name}/{version}: smoke forward failed ({type(e).__name__}: {e})") from None
    return model

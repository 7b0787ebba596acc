"""The artifact contract between export, which writes a model repository, and serving, which reads it.

Like Triton's model repository, a folder convention is the whole contract, and this module is its one
written form (export and serving both import it; it imports nothing of theirs):

    <registry>/<name>/LATEST                      the version to serve, then a newline
    <registry>/<name>/<version>/model.onnx        input `context` int64 [batch, block_size],
                                                  (conditional models also `condition` int64 [batch, k]),
                                                  output `logits` float32 [batch, vocab], batch dynamic
                               /model.pt2         the same program for torch.export (NAMEGEN_BACKEND=torch)
                               /training_names.txt  the distinct training names, one per line
                               /manifest.json     what the version is: see `Manifest`
                               /model_step.onnx   optional (wavenets): the incremental step
                                                  model, see export/step_export.py; listed in the manifest
                                                  under 'step_model' and hashed like every file

Names match NAME_PATTERN (never a leading dot: `.staging-*` and `.trash-*` folders are export's own).
Versions are UTC timestamps (VERSION_FORMAT), so string order is creation order. A published version
folder is never modified; only LATEST moves, by an atomic replace (`write_latest`).

A registry is input: every reader here refuses what does not follow the contract with ContractError,
naming the file and the reason, and never follows a LATEST outside its own model's folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")
VERSION_PATTERN = re.compile(r"\d{8}T\d{12}Z")
VERSION_FORMAT = "%Y%m%dT%H%M%S%fZ"

LATEST_FILE = "LATEST"
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
PT2_FILE = "model.pt2"
TRAINING_NAMES_FILE = "training_names.txt"
VERSION_FILES = (ONNX_FILE, PT2_FILE, MANIFEST_FILE, TRAINING_NAMES_FILE)  # every version has these
STEP_FILE = "model_step.onnx"  # only where the manifest names it ('step_model'); older versions have none

MANIFEST_FORMAT = "namegen.model"
MANIFEST_FORMAT_VERSION = 1  # 'step_model' is optional: manifests without it load as before

# The ONNX graph's interface and the metadata_props export writes into it.
ONNX_INPUT = "context"
# A conditional model's second input: per row, one index per condition of the manifest's `conditions`,
# 0 for "any" (the marginal over that condition) and i for its values[i - 1].
ONNX_CONDITION = "condition"
ONNX_OUTPUT = "logits"
BATCH_AXIS = "batch"
# The step model's interface: `tail` int64 [batch, 4] (the last four characters of the context) and `left`
# float32 [batch, levels, width] in; ONNX_OUTPUT and `nodes` float32 [batch, levels, width] out.
STEP_TAIL = "tail"
STEP_LEFT = "left"
STEP_NODES = "nodes"
ONNX_METADATA_KEYS = ("name", "vocab", "block_size", "model_type", "version", "data_sha256", "val_nll", "test_nll")
ONNX_CONDITIONS_KEY = "conditions"  # conditional models only: the manifest's `conditions` as JSON

# Limits every part agrees on.
MAX_NAME_LENGTH = 64  # characters, prefix included: what sampling may produce and scoring accepts
MAX_VOCAB = 32767  # serving keeps tokens as int16
MAX_BLOCK_SIZE = 1024  # context characters
MAX_LATEST_BYTES = 256  # a version name and a newline, with room to spare
MAX_MANIFEST_BYTES = 16 * 2**20


class ContractError(ValueError):
    """A registry entry that does not follow the contract; the message names the file and the reason."""


def is_model_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None


def is_version(version: str) -> bool:
    return VERSION_PATTERN.fullmatch(version) is not None


def model_names(root: Path) -> list[str]:
    """Every model with a LATEST file, sorted."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if is_model_name(p.name) and (p / LATEST_FILE).is_file())


def versions(root: Path, name: str) -> list[str]:
    """Every published version folder of `name`, oldest first."""
    name_dir = root / name
    if not name_dir.is_dir():
        return []
    return sorted(p.name for p in name_dir.iterdir() if p.is_dir() and is_version(p.name))


def read_latest(root: Path, name: str) -> str | None:
    """The version LATEST names: None when `name` has no LATEST; ContractError when it is not a version
    name of this registry's pattern (bytes that are not text, a path, empty, truncated, too long)."""
    path = root / name / LATEST_FILE
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_LATEST_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise ContractError(f"{path}: cannot read it ({e.strerror})") from None
    if len(raw) > MAX_LATEST_BYTES:
        raise ContractError(f"{path}: over {MAX_LATEST_BYTES} bytes, not a version name")
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ContractError(f"{path}: not ASCII text, not a version name") from None
    if not is_version(text):
        raise ContractError(f"{path}: {text!r} is not a version (expected like 20261122T004501123456Z)")
    return text


def write_latest(root: Path, name: str, version: str) -> None:
    """Point LATEST at `version` atomically: a fsynced temporary file, os.replace, fsync of the folder."""
    if not is_version(version):
        raise ContractError(f"{version!r} is not a version")
    name_dir = root / name
    fd, tmp = tempfile.mkstemp(dir=name_dir, prefix=f".{LATEST_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a server running as another user must read it
        os.replace(tmp, name_dir / LATEST_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(name_dir)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """The keys of manifest.json that serving relies on, type-checked; `raw` holds the whole document
    (export writes more for people: parity figures, versions of the tools, the checkpoint's path)."""

    model_type: str
    vocab: tuple[str, ...]  # vocab[0] is the boundary token: start context and end of name
    block_size: int  # context characters the model reads
    version: str
    files: dict[str, str]  # file name -> sha256 of every file in the folder but the manifest
    training_names: str | None  # the file of training names, if any
    metrics: dict[str, float] = field(default_factory=dict)  # train_nll, val_nll, test_nll, ...
    raw: dict = field(default_factory=dict, repr=False, compare=False)
    # A conditional model's conditions: (name, its values in index order 1, 2, ...), and the training
    # frequency of each combination of values seen (indices, from 1): the prior of p(condition | name).
    conditions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    condition_prior: tuple[tuple[tuple[int, ...], float], ...] = ()
    # A conditional model's default guidance scale, for requests that name a condition and no scale.
    guidance: float = 0.0
    step_model: StepModelSpec | None = None  # the incremental step model, if the version has one


@dataclass(frozen=True)
class StepModelSpec:
    """manifest.json's 'step_model': the file and the shape of its caches past the batch axis."""

    file: str
    levels: int  # the wavenet's levels - 2 (the cached ones): `left` and `nodes` are [batch, levels, width]
    width: int  # hidden width, every member's side by side


def _step_model(data: dict, files: dict, fail) -> StepModelSpec | None:
    spec = data.get("step_model")
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("file") not in files or \
            not all(type(spec.get(k)) is int and 1 <= spec[k] <= MAX_BLOCK_SIZE * 2**10 for k in ("levels", "width")):
        fail("'step_model' must be {'file': a file listed in 'files', 'levels': int >= 1, 'width': int >= 1}")
    return StepModelSpec(spec["file"], spec["levels"], spec["width"])


def validate_manifest(data, where: str) -> Manifest:
    """Manifest from a decoded manifest.json, or ContractError naming the key and what is wrong with it."""
    def fail(reason: str):
        raise ContractError(f"{where}: {reason}")

    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        fail("not a namegen model manifest (format must be 'namegen.model')")
    for key in ("vocab", "block_size", "model_type", "version"):
        if key not in data:
            fail(f"missing {key!r}")
    vocab = data["vocab"]
    if not isinstance(vocab, list) or not 2 <= len(vocab) <= MAX_VOCAB or \
            not all(isinstance(ch, str) and len(ch) == 1 for ch in vocab) or len(set(vocab)) != len(vocab):
        fail(f"'vocab' must be a list of 2 to {MAX_VOCAB} distinct single characters")
    block_size = data["block_size"]
    if type(block_size) is not int or not 1 <= block_size <= MAX_BLOCK_SIZE:
        fail(f"'block_size' must be an integer from 1 to {MAX_BLOCK_SIZE}, not {block_size!r:.40}")
    if not isinstance(data["model_type"], str) or not isinstance(data["version"], str):
        fail("'model_type' and 'version' must be strings")
    files = data.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        fail("'files' must map file names to sha256 hex digests")
    names_file = data.get("training_names")
    if names_file is not None and (not isinstance(names_file, str) or names_file not in files):
        fail("'training_names' must name a file listed in 'files'")
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in metrics.values()):
        fail("'metrics' must map names to numbers")
    conditions, prior = validate_conditions(data.get("conditions", []), data.get("condition_prior", []), fail)
    guidance = data.get("guidance", 0.0)
    if type(guidance) not in (int, float) or not 0 <= guidance <= MAX_GUIDANCE or (guidance and not conditions):
        fail(f"'guidance' must be a number from 0 to {MAX_GUIDANCE:g}, and only a conditional model's")
    return Manifest(data["model_type"], tuple(vocab), block_size, data["version"], dict(files), names_file,
                    {k: float(v) for k, v in metrics.items()}, data, conditions, prior, float(guidance),
                    _step_model(data, files, fail))


CONDITION_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_CONDITIONS, MAX_CONDITION_VALUES = 8, 1000
# Classifier-free guidance: a guided row samples from logits(c) + w * (logits(c) - logits(c without the
# conditions its request named)); serving/runner.py.
MAX_GUIDANCE = 20.0
DEFAULT_GUIDANCE = 3.0  # what export writes into a conditional model's manifest, and `training sample` uses


def validate_conditions(conditions, prior, fail) -> tuple[tuple, tuple]:
    """`conditions`: [{"name", "values"}], `condition_prior`: [{"values", "p"}]; as Manifest holds them."""
    if not isinstance(conditions, list) or len(conditions) > MAX_CONDITIONS or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and CONDITION_NAME.fullmatch(c["name"])
            and isinstance(c.get("values"), list) and 1 <= len(c["values"]) <= MAX_CONDITION_VALUES
            and all(isinstance(v, str) and v for v in c["values"]) and len(set(c["values"])) == len(c["values"])
            for c in conditions) or len({c["name"] for c in conditions}) != len(conditions):
        fail(f"'conditions' must list up to {MAX_CONDITIONS} {{name, values}} with distinct lowercase names "
             f"and 1 to {MAX_CONDITION_VALUES} distinct non-empty string values")
    parsed = tuple((c["name"], tuple(c["values"])) for c in conditions)
    lookup = [{v: i + 1 for i, v in enumerate(values)} for _, values in parsed]
    if not isinstance(prior, list) or (parsed and not prior):
        fail("'condition_prior' must list the frequency of each combination of condition values")
    combos = []
    for entry in prior:
        values = entry.get("values") if isinstance(entry, dict) else None
        p = entry.get("p") if isinstance(entry, dict) else None
        if not isinstance(values, list) or len(values) != len(parsed) or \
                not all(isinstance(v, str) and v in known for v, known in zip(values, lookup)) or \
                type(p) not in (int, float) or not 0 < p <= 1:
            fail("'condition_prior' entries must be {values: one known value per condition, p: in (0, 1]}")
        combos.append((tuple(known[v] for v, known in zip(values, lookup)), float(p)))
    return parsed, tuple(combos)


def read_manifest(version_dir: Path) -> Manifest:
    path = version_dir / MANIFEST_FILE
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ContractError(f"{path}: over {MAX_MANIFEST_BYTES >> 20} MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContractError(f"{version_dir}: no {MANIFEST_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ContractError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    except OSError as e:
        raise ContractError(f"{path}: cannot read it ({e.strerror})") from None
    return validate_manifest(data, str(path))


def verify_files(version_dir: Path, manifest: Manifest, names: list[str]) -> None:
    """Each named file is listed in the manifest, is a file inside the version folder (a symlink out of it
    is refused), and matches its sha256."""
    inside = version_dir.resolve()
    for name in names:
        path = version_dir / name
        if name not in manifest.files:
            raise ContractError(f"{version_dir / MANIFEST_FILE}: {name} is not listed in 'files'")
        if not path.is_file() or path.resolve().parent != inside:
            raise ContractError(f"{path}: missing, or not a file inside its version folder")
        if sha256_file(path) != manifest.files[name]:
            raise ContractError(f"{path}: sha256 differs from the manifest (corrupt or tampered)")

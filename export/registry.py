"""Writing the model repository that `namegen.contract` lays down: staging, atomic publishing, pruning,
rollback and listing. The layout, LATEST and the manifest's format are the contract's; this module owns
how export changes a registry safely.

Atomicity: a version is written into a temporary folder in DIR, fsynced, and renamed into place
whole; LATEST is replaced with os.replace of a fsynced temp file. Both renames are atomic on POSIX,
so at any instant, kill -9 included, LATEST names a complete version and earlier versions are
untouched. A kill leaves at most a `.staging-*` folder or a `.LATEST.*.tmp` file: model names never
start with a dot, so no reader mistakes them for models, and the next export removes them (a staging
folder's writer holds an flock on its `.lock` file while it lives, so a live export's is never touched).

No torch here: `python -m export list` and `rollback` stay cheap.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from namegen import contract
from namegen.contract import MANIFEST_FILE, VERSION_FILES, VERSION_FORMAT, fsync_dir, versions

from .errors import ExportError

STALE_UNLOCKED_S = 3600  # a leftover without a lock file (killed between mkdtemp and the lock) after this


class RegistryError(ExportError):
    pass


def check_name(name: str) -> str:
    if not contract.is_model_name(name):
        raise RegistryError(f"model name {name!r}: use lowercase letters, digits and . _ - "
                            "(starting with a letter or digit)")
    return name


def check_version(version: str) -> str:
    if not contract.is_version(version):
        raise RegistryError(f"version {version!r}: not a version (expected like 20261122T004501123456Z)")
    return version


def version_time(version: str) -> datetime:
    return datetime.strptime(check_version(version), VERSION_FORMAT).replace(tzinfo=timezone.utc)


def created_at(version: str) -> str:
    """ISO 8601 UTC, e.g. 2026-11-22T00:45:01.123456Z."""
    return version_time(version).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def registry_root(path: str | Path, create: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RegistryError(f"registry {path}: is a file, not a folder")
    if not path.exists():
        if not create:
            raise RegistryError(f"registry {path}: no such folder")
        path.mkdir(parents=True)
    return path


def is_complete(root: Path, name: str, version: str) -> bool:
    return all((root / name / version / f).is_file() for f in VERSION_FILES)


def read_latest(root: Path, name: str) -> str | None:
    """The version LATEST names, or None when it is missing or does not name one (list and rollback say so)."""
    try:
        return contract.read_latest(root, name)
    except contract.ContractError:
        return None


def read_manifest(root: Path, name: str, version: str) -> dict | None:
    try:
        return json.loads((root / name / version / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)


@dataclass
class Staging:
    """A version being written: files go into `path`, which publish() renames to root/name/version."""

    root: Path
    name: str
    version: str
    path: Path
    lock: int | None = None  # a descriptor holding an flock on path's .lock file while this process writes

    @property
    def created_at(self) -> str:
        return created_at(self.version)


def _next_version(root: Path, name: str) -> str:
    stamp = datetime.now(timezone.utc)
    existing = versions(root, name)
    if existing:
        # Bump by a microsecond past the newest, so order stays creation order even if the clock steps back.
        stamp = max(stamp, version_time(existing[-1]) + timedelta(microseconds=1))
    return stamp.strftime(VERSION_FORMAT)


def stage(root: Path, name: str) -> Staging:
    """Pick the next version of `name` and make an empty temporary folder in `root` to write it into,
    after removing what killed exports left behind."""
    check_name(name)
    remove_leftovers(root)
    version = _next_version(root, name)
    path = Path(tempfile.mkdtemp(dir=root, prefix=f".staging-{name}-{version}-"))
    lock = os.open(_lock_file(path), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return Staging(root, name, version, path, lock)


def discard(staging: Staging) -> None:
    shutil.rmtree(staging.path, ignore_errors=True)
    _release(staging)


def _lock_file(staging_path: Path) -> Path:
    return staging_path.with_name(staging_path.name + ".lock")


def _release(staging: Staging) -> None:
    if staging.lock is not None:
        _lock_file(staging.path).unlink(missing_ok=True)
        os.close(staging.lock)
        staging.lock = None


def _writer_alive(lock_file: Path) -> bool:
    """Whether a live process holds the flock on this staging folder's lock file."""
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:  # not ours to open (another user's export): leave its folder alone
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def remove_leftovers(root: Path) -> list[str]:
    """Remove what killed exports and prunes left: staging folders whose writer is gone, half-deleted
    `.trash-*` folders, stale `.LATEST.*.tmp` files. Returns their names."""
    removed, old = [], time.time() - STALE_UNLOCKED_S
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".staging-") and entry.suffix != ".lock":
            lock = _lock_file(entry)
            if _writer_alive(lock) or (not lock.exists() and _modified(entry, default=old + 1) > old):
                continue  # alive, just made by an export not yet holding its lock, or gone meanwhile
            shutil.rmtree(entry, ignore_errors=True)
            lock.unlink(missing_ok=True)
        elif entry.name.startswith(".trash-"):
            shutil.rmtree(entry, ignore_errors=True)
        else:
            removed += [f"{entry.name}/{tmp.name}" for tmp in _stale_latest_files(entry, old)]
            continue
        removed.append(entry.name)
    return removed


def _modified(path: Path, default: float) -> float:
    """path's mtime; `default` if a concurrent export renamed or removed it meanwhile."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return default


def _stale_latest_files(model_dir: Path, older_than: float) -> list[Path]:
    if not model_dir.is_dir() or not contract.is_model_name(model_dir.name):
        return []
    stale = [p for p in model_dir.glob(".LATEST.*.tmp") if _modified(p, default=older_than) < older_than]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def publish(staging: Staging, keep: int | None = None,
            _fault: Callable[[str], None] | None = None) -> Path:
    """Move the staged version into place, point LATEST at it, prune to `keep` versions.

    `_fault(step)` is called at "staged" (files fsynced, not yet renamed) and "renamed" (version in
    place, LATEST not yet moved): tests raise or stall there to show a failure leaves a sound registry.
    """
    try:
        return _publish(staging, keep, _fault or (lambda step: None))
    finally:
        _release(staging)


def _publish(staging: Staging, keep: int | None, fault: Callable[[str], None]) -> Path:
    target = staging.root / staging.name / staging.version
    try:
        missing = [f for f in VERSION_FILES if not (staging.path / f).is_file()]
        if missing:
            raise RegistryError(f"{staging.name}/{staging.version}: incomplete, missing {', '.join(missing)}")
        os.chmod(staging.path, 0o755)  # mkdtemp makes it 0700
        _fsync_tree(staging.path)
        fault("staged")
        target.parent.mkdir(exist_ok=True)  # only now: a refused first export leaves no empty model folder
        if target.exists():
            raise RegistryError(f"{target}: already exists (a concurrent publish?); export again")
        try:
            os.rename(staging.path, target)
        except OSError as e:  # lost a race for the same version to another publisher
            raise RegistryError(f"{target}: cannot publish ({e.strerror}); export again") from None
    except BaseException:
        discard(staging)
        raise
    fsync_dir(target.parent)
    fsync_dir(staging.root)
    fault("renamed")
    contract.write_latest(staging.root, staging.name, staging.version)
    if keep is not None:
        prune(staging.root, staging.name, keep)
    return target


def prune(root: Path, name: str, keep: int) -> list[str]:
    """Delete all but the `keep` newest versions, never the one LATEST names. Returns the deleted ones."""
    if keep < 1:
        raise RegistryError(f"--keep {keep}: must keep at least one version")
    latest = read_latest(root, name)
    doomed = [v for v in versions(root, name)[:-keep] if v != latest]
    for version in doomed:
        # Rename first, so a half-deleted folder never looks like a version.
        trash = root / f".trash-{name}-{version}-{secrets.token_hex(4)}"
        os.rename(root / name / version, trash)
        shutil.rmtree(trash, ignore_errors=True)  # what is left, the next export removes
    if doomed:
        fsync_dir(root / name)
    return doomed


def rollback(root: Path, name: str, to: str | None = None) -> tuple[str | None, str]:
    """Point LATEST at `to`, or at the version before the current LATEST. Returns (old, new)."""
    check_name(name)
    if not (root / name).is_dir():
        raise RegistryError(f"no model named {name!r} in {root}")
    current = read_latest(root, name)
    published = versions(root, name)
    if to is not None:
        check_version(to)
        if to not in published:
            raise RegistryError(f"{name} has no version {to}; `python -m export list --registry {root}` "
                                "shows the versions")
        target = to
    else:
        if current is None:
            raise RegistryError(f"{name} has no LATEST to roll back from; name a version with --to")
        older = [v for v in published if v < current]
        if not older:
            raise RegistryError(f"{name}: no version older than {current} to roll back to")
        target = older[-1]
    if not is_complete(root, name, target):
        raise RegistryError(f"{name}/{target}: incomplete (needs {', '.join(VERSION_FILES)}); not rolling back to it")
    contract.write_latest(root, name, target)
    return current, target


@dataclass
class VersionEntry:
    version: str
    manifest: dict | None  # None when unreadable
    latest: bool


def list_models(root: Path) -> dict[str, list[VersionEntry]]:
    """{name: versions oldest first} for every model folder in the registry."""
    models = {}
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir() and contract.is_model_name(p.name)):
        latest = read_latest(root, name_dir.name)
        models[name_dir.name] = [VersionEntry(v, read_manifest(root, name_dir.name, v), v == latest)
                                 for v in versions(root, name_dir.name)]
    return models

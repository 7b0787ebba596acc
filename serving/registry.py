"""Reading export's model repository: <registry>/<name>/LATEST and <registry>/<name>/<version>/.

Serving shares nothing with export but this folder convention and manifest.json (no import of export).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
LATEST = "LATEST"
MANIFEST_FORMAT = "namegen.model"


class ArtifactError(Exception):
    """A model version that cannot be served; the message says which file and why."""


def model_names(registry: Path) -> list[str]:
    if not registry.is_dir():
        return []
    return sorted(p.name for p in registry.iterdir() if (p / LATEST).is_file())


def latest_version(registry: Path, name: str) -> str | None:
    try:
        version = (registry / name / LATEST).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return version or None


def read_manifest(version_dir: Path) -> dict:
    try:
        manifest = json.loads((version_dir / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{version_dir}: no {MANIFEST}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{version_dir / MANIFEST}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(f"{version_dir / MANIFEST}: not a namegen model manifest")
    for key in ("vocab", "block_size", "model_type", "version"):
        if key not in manifest:
            raise ArtifactError(f"{version_dir / MANIFEST}: missing {key!r}")
    return manifest


def verify_files(version_dir: Path, manifest: dict, names: list[str]) -> None:
    """Each listed file exists and matches the sha256 the manifest recorded for it."""
    recorded = manifest.get("files", {})
    for name in names:
        path = version_dir / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing")
        if name in recorded and hashlib.sha256(path.read_bytes()).hexdigest() != recorded[name]:
            raise ArtifactError(f"{path}: sha256 differs from the manifest (corrupt or tampered)")

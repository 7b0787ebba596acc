"""Shared fixtures: a small real name list, paths to the shared names.txt, a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_NAMES = ROOT.parent / "shared" / "data" / "names.txt"


def run_module(module: str, *args, timeout: float = 300, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root, output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, **kw)


@pytest.fixture(scope="session")
def ssa_words() -> list[str]:
    from training.data import load_ssa_names

    return load_ssa_names(2017)


@pytest.fixture(scope="session")
def small_names_file(tmp_path_factory, ssa_words) -> Path:
    """2,000 real names (every 16th SSA 2017 record): enough to learn something in seconds."""
    path = tmp_path_factory.mktemp("data") / "names.txt"
    path.write_text("\n".join(ssa_words[::16]) + "\n")
    return path


@pytest.fixture(scope="session")
def shared_names() -> Path:
    if not SHARED_NAMES.is_file():
        pytest.skip("../shared/data/names.txt is absent")
    return SHARED_NAMES

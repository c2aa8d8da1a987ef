"""The code stays clean: mypy --strict over src/, docs/hooks and examples/, ruff over
src, tests, bench, fuzz, docs/hooks and examples; the sans-I/O import contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_mypy_strict() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "bench",
                           "fuzz", "docs/hooks", "examples"], cwd=REPO, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_pure_cores_import_nothing_doing_io() -> None:
    """The contract in pyproject.toml's [tool.importlinter] (lint-imports)."""
    done = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=REPO,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout

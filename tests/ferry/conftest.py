"""Fixtures of the ferry tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ferry.harness import write_token


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("root", "src", "back")}
    for path in paths.values():
        path.mkdir()
    paths["token"] = write_token(tmp_path / "token")
    return paths

"""The documentation site builds with warnings as errors, and its CLI reference is whole.

``mkdocs build --strict`` fails on a broken link, a missing nav entry or a bad anchor, so
this test fails on them too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sockferry.cli import COMMANDS

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")


@pytest.mark.timeout(120)
def test_site_builds_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    reference = (site / "reference" / "cli" / "index.html").read_text()
    for name in COMMANDS:
        assert f"sockferry {name}" in reference, name
        assert f"usage: sockferry {name}" in reference, name
    assert "cli-reference" not in reference  # the marker was replaced

"""The distribution as PyPI would get it: a wheel and an sdist that build from this
checkout and pass ``twine check`` (metadata, README rendering)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


def test_wheel_and_sdist_pass_twine_check(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "build", "--outdir",
                            str(tmp_path), str(ROOT)], capture_output=True, text=True,
                           timeout=240, check=False)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel, = tmp_path.glob("sockferry-*.whl")
    sdist, = tmp_path.glob("sockferry-*.tar.gz")
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel),
                            str(sdist)], capture_output=True, text=True, timeout=60,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert "sockferry/py.typed" in names and "sockferry/cli/__init__.py" in names
    for field in ("Classifier: Topic :: System :: Networking", "Keywords:",
                  "License-Expression: MIT", "Requires-Dist: prometheus_client"):
        assert field in metadata, field

"""scripts/ceph-down signals exactly the daemons ceph-up recorded, and both scripts refuse
a directory that is not theirs to use; no Ceph needed (stand-in processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ceph import CEPH_DOWN, CEPH_UP
from tests.conftest import wait_until

# A stand-in daemon: notes that it is ready and, on TERM, its name; then exits on TERM, or
# ignores it (as a daemon stuck in its shutdown would).  Its command line names the
# cluster's ceph.conf, as ceph-up's daemons' do (-c DIR/ceph.conf).
DAEMON = """
import signal, sys, time
name, conf, notes, ignore_term = sys.argv[1:5]
def on_term(signum, frame):
    with open(notes, "a") as f:
        f.write(f"TERM {name}\\n")
    if ignore_term != "1":
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
with open(notes, "a") as f:
    f.write(f"ready {name}\\n")
time.sleep(120)
"""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def _start(started: list[subprocess.Popen[bytes]], name: str, conf: Path, notes: Path,
           ignore_term: bool = False) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", DAEMON, name, str(conf), str(notes),
                                "1" if ignore_term else "0"])
    started.append(process)
    return process


def _ceph_up_dir(path: Path) -> tuple[Path, Path]:
    path.mkdir()
    (path / ".ceph-up").touch()
    (path / "ceph.conf").write_text("[global]\n")
    return path / "ceph.conf", path.parent / "notes"


def test_ceph_down_stops_the_recorded_daemons_and_nothing_else(
        tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    cluster = tmp_path / "cluster"
    conf, notes = _ceph_up_dir(cluster)
    mon = _start(processes, "mon.a", conf, notes)
    osd = _start(processes, "osd.0", conf, notes, ignore_term=True)  # needs a KILL
    rgw = _start(processes, "rgw.a", conf, notes)
    # A recorded PID now running another program (no ceph.conf on its command line), and
    # a process of this cluster's that ceph-up never recorded: neither is touched.
    other = _start(processes, "other", tmp_path / "elsewhere.conf", notes)
    unrecorded = _start(processes, "unrecorded", conf, notes)
    (cluster / "pids").write_text(
        f"mon.a {mon.pid}\nosd.0 {osd.pid}\nrgw.a {rgw.pid}\nmds.x {other.pid}\n")
    wait_until(lambda: notes.exists() and notes.read_text().count("ready") == 5, 20,
               "the stand-in daemons to be ready")

    done = subprocess.run([str(CEPH_DOWN), str(cluster)], capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, "CEPH_DOWN_GRACE": "1"})

    assert done.returncode == 0, done.stderr
    assert not cluster.exists()
    assert f"killing PIDs {osd.pid}" in done.stderr
    assert rgw.wait(timeout=10) == 0
    assert osd.wait(timeout=10) == -signal.SIGKILL
    assert mon.wait(timeout=10) == 0
    terms = [line for line in notes.read_text().splitlines() if line.startswith("TERM")]
    assert terms == ["TERM rgw.a", "TERM osd.0", "TERM mon.a"]  # radosgw first, mon last
    assert other.poll() is None
    assert unrecorded.poll() is None


def test_ceph_down_refuses_a_directory_ceph_up_did_not_make(
        tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    cluster = tmp_path / "cluster"
    conf, notes = _ceph_up_dir(cluster)
    (cluster / ".ceph-up").unlink()
    mon = _start(processes, "mon.a", conf, notes)
    (cluster / "pids").write_text(f"mon.a {mon.pid}\n")
    wait_until(lambda: notes.exists() and "ready" in notes.read_text(), 20,
               "the stand-in daemon to be ready")

    done = subprocess.run([str(CEPH_DOWN), str(cluster)], capture_output=True, text=True,
                          timeout=60, check=False)

    assert done.returncode != 0
    assert "not a directory of scripts/ceph-up" in done.stderr
    assert sorted(p.name for p in cluster.iterdir()) == ["ceph.conf", "pids"]
    assert mon.poll() is None


def test_ceph_up_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    done = subprocess.run([str(CEPH_UP), str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, "CEPH_UP_NO_INSTALL": "1"})
    assert done.returncode != 0
    assert "is not empty" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

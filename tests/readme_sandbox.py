"""Run one README shell example exactly as written, in a sandbox of its own.

Started by tests/test_readme.py under ``unshare --net --mount`` (root): inside, a fresh
network namespace (loopback up, the README's documentation addresses on it), a private
/etc/hosts naming ``server.example``, empty tmpfs mounts on /srv and /run and a fresh
HOME, so that the README's commands — ``/srv/files``, ``/run/sockferry.sock``,
``server.example:inbox/`` — run unchanged and touch nothing outside.

Each line of the block is one command run by bash in a working directory holding the
files the examples name.  A ``sockferry serve`` or ``tftp-serve`` line starts a server
in the background (stopping the one before) and waits until it logs that it listens.  A
placeholder fingerprint (``SHA256:xxxx...``) is replaced by the running server's own.
Prints one JSON object per command: the command, its exit code and its output.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

COMMAND_TIMEOUT_S = 60.0
SERVER_START_TIMEOUT_S = 20.0
DOCUMENTATION_ADDRESSES = ("2001:db8::5/128",)  # RFC 3849 addresses the README uses
HOSTS = "127.0.0.1 localhost server.example\n::1 localhost server.example\n"
PLACEHOLDER_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]+\.\.\.")
SERVER_FINGERPRINT = re.compile(r"fingerprint (SHA256:[A-Za-z0-9+/=]+)")
SERVER_READY = re.compile(r"listening on|serving .* on |server on ")  # what each server logs
SERVER_COMMANDS = ("sockferry serve ", "sockferry tftp-serve ", "sockferry sctp-serve ")


def _sandbox(work: Path) -> dict[str, str]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in DOCUMENTATION_ADDRESSES:
        subprocess.run(["ip", "-6", "addr", "add", address, "dev", "lo"], check=True)
    hosts = work / "hosts"
    hosts.write_text(HOSTS)
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
    for mountpoint in ("/srv", "/run"):
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", mountpoint], check=True)
    Path("/srv/files").mkdir()
    home = work / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home))
    env.pop("SOCKFERRY_TOKEN", None)
    env["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), env.get("PATH", "")))
    return env


def _fixtures(cwd: Path) -> None:
    """The local files the README's examples name."""
    cwd.mkdir()
    (cwd / "report.pdf").write_bytes(b"%PDF-1.4 not really\n" * 100)
    (cwd / "file.bin").write_bytes(os.urandom(300_000))
    for tree in ("photos", "dir", "project"):
        (cwd / tree / "sub").mkdir(parents=True)
        (cwd / tree / "a.jpg").write_bytes(os.urandom(5_000))
        (cwd / tree / "sub" / "b.txt").write_text("b\n")
    (cwd / "hello.txt").write_text("hello\n")


class _Server:
    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path()
        self.fingerprint = ""

    def start(self, command: str, env: dict[str, str], cwd: Path, log: Path) -> str:
        self.stop()
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd,
                                            env=env, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            text = log.read_text(errors="replace")
            if SERVER_READY.search(text):
                found = SERVER_FINGERPRINT.search(text)
                self.fingerprint = found.group(1) if found else ""
                return text
            time.sleep(0.05)
        raise RuntimeError(f"the server did not start: {command}\n"
                           f"{log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None


def main(work_dir: str, block_file: str) -> None:
    work = Path(work_dir)
    env = _sandbox(work)
    cwd = work / "cwd"
    _fixtures(cwd)
    server = _Server()
    try:
        for number, line in enumerate(Path(block_file).read_text().splitlines()):
            command = line.strip()
            if not command or command.startswith("#"):
                continue
            if command.startswith(SERVER_COMMANDS):
                text = server.start(command, env, cwd, work / f"server-{number}.log")
                print(json.dumps({"command": command, "code": 0, "output": text}), flush=True)
                continue
            if server.fingerprint:
                command = PLACEHOLDER_FINGERPRINT.sub(server.fingerprint, command)
            result = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd,
                                    env=env, capture_output=True, timeout=COMMAND_TIMEOUT_S,
                                    check=False)
            print(json.dumps({"command": line.strip(), "code": result.returncode,
                              "output": (result.stdout + result.stderr).decode(
                                  errors="replace")}), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Start-up: what each command line loads, and that the fast exit loses no output.

Each check runs a fresh interpreter (a module, once imported, stays in sys.modules), with
this checkout's ``src`` first on its path.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import sockferry
from sockferry.cli import COMMANDS
from tests.ferry.harness import ServerThread, write_token

SRC = str(Path(sockferry.__file__).resolve().parents[1])
# Without PYTHONUNBUFFERED piped output is block-buffered, as for a user's `| less`: what
# the fast exit would lose if nothing flushed it.
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": SRC}

# Prints the argv's output, then (on stderr, as JSON) the modules the interpreter holds.
PROBE = """
import json, sys
from sockferry.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""

NEVER_FOR_HELP = ("asyncio", "rich", "uvloop", "blake3", "crc32c")
# TLS code, and cryptography (~30 ms to import), only for --tls.
TLS_MODULES = ("cryptography", "sockferry.tls", "sockferry.tlsstream",
               "sockferry.ferry.secure", "sockferry.known_hosts")


def loaded_by(*argv: str) -> tuple[int, str, set[str]]:
    """(exit code, stdout, modules loaded) of ``main(argv)`` in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], env=ENV, capture_output=True,
                            text=True, timeout=60, check=True)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    return report["code"], result.stdout, set(report["modules"])


def under(modules: set[str], *packages: str) -> list[str]:
    return sorted(name for name in modules
                  if any(name == p or name.startswith(p + ".") for p in packages))


def test_version_loads_no_command_module() -> None:
    code, out, modules = loaded_by("--version")
    assert (code, out) == (0, f"sockferry {sockferry.__version__}\n")
    assert under(modules, *NEVER_FOR_HELP, *TLS_MODULES, "logging") == []
    assert under(modules, "sockferry.ferry", "sockferry.sctp", "sockferry.tftp",
                 "sockferry.sockets", "sockferry.storage", "sockferry.cli.ferry",
                 "sockferry.cli.ferry_client", "sockferry.cli.ferry_serve",
                 "sockferry.cli.tftp", "sockferry.cli.sctp", "sockferry.cli.probe") == []


def test_help_lists_every_command_and_loads_none() -> None:
    code, out, modules = loaded_by("--help")
    assert code == 0
    assert " ".join(out.split()).startswith(
        "usage: sockferry [-h] [--version] [--debug] [-q] [-v] [--config FILE] COMMAND ...")
    for name, (_, summary) in COMMANDS.items():
        assert name in out
        assert " ".join(summary.split()[:3]) in " ".join(out.split())
    assert under(modules, *NEVER_FOR_HELP) == []
    assert under(modules, "sockferry.ferry", "sockferry.sctp", "sockferry.tftp",
                 "sockferry.cli.ferry", "sockferry.cli.ferry_client",
                 "sockferry.cli.ferry_serve", "sockferry.cli.tftp", "sockferry.cli.sctp") == []


def test_send_help_loads_only_the_ferry_client_side() -> None:
    code, out, modules = loaded_by("send", "--help")
    assert code == 0
    assert out.startswith("usage: sockferry send [-h]")
    assert "HOST:DEST" in out
    assert under(modules, "rich", "uvloop", "blake3", "crc32c", *TLS_MODULES) == []
    assert under(modules, "sockferry.tftp", "sockferry.cli.tftp", "sockferry.cli.sctp",
                 "sockferry.cli.probe", "sockferry.ferry.server",
                 "sockferry.ferry.connection", "sockferry.ferry.uploads",
                 "sockferry.ferry.answers", "sockferry.ferry.durability",
                 "sockferry.ferry.over_sctp", "sockferry.ferry.tokens") == []
    # The sctp package names the --sctp-stack choices; no SCTP module is loaded.
    assert under(modules, "sockferry.sctp") == ["sockferry.sctp"]


def test_a_wrong_command_is_a_usage_error_without_loading_modules() -> None:
    code, out, modules = loaded_by("bogus")
    assert (code, out) == (2, "")
    assert under(modules, "sockferry.cli.ferry", "sockferry.cli.ferry_client",
                 "sockferry.cli.ferry_serve", "sockferry.cli.tftp", "asyncio") == []


def test_summaries_are_the_modules_own_help() -> None:
    """`sockferry --help` shows the table's lines; the modules register the same ones."""
    registered: dict[str, str] = {}
    for module in dict.fromkeys(m for m, _ in COMMANDS.values()):
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(f"sockferry.cli.{module}").register(sub)
        for action in sub._choices_actions:
            registered[action.dest] = str(action.help)
    assert registered == {name: summary for name, (_, summary) in COMMANDS.items()}


def run_script(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m sockferry ARGV`` (the console script's path: cli.run), output piped."""
    return subprocess.run([sys.executable, "-m", "sockferry", *argv], env=ENV,
                          capture_output=True, text=True, timeout=60, check=False)


def test_script_exit_keeps_piped_output_and_codes() -> None:
    version = run_script("--version")
    assert (version.returncode, version.stdout, version.stderr) == (
        0, f"sockferry {sockferry.__version__}\n", "")
    wrong = run_script("bogus")
    assert wrong.returncode == 2
    assert wrong.stdout == ""
    assert wrong.stderr.startswith("sockferry: error: argument COMMAND: invalid choice")
    assert wrong.stderr.count("\n") == 1


def test_script_send_reports_after_the_transfer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    token = write_token(tmp_path / "token")
    source = tmp_path / "four-k.bin"
    source.write_bytes(os.urandom(4096))
    with ServerThread(root) as server:
        result = run_script("send", "-v", "-P", str(server.port), "--token-file", str(token),
                            str(source), "127.0.0.1:")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"sent {source} -> four-k.bin (4.0 KiB, digest verified)\n")
    assert result.stderr.startswith("sockferry: sent 1 file(s), 4.0 KiB in ")
    assert (root / "four-k.bin").read_bytes() == source.read_bytes()


def test_a_plaintext_transfer_loads_no_tls_code(tmp_path: Path) -> None:
    token = write_token(tmp_path / "token")
    with ServerThread(tmp_path) as server:
        code, _out, modules = loaded_by("ls", "-P", str(server.port), "--token-file",
                                        str(token), "127.0.0.1:")
    assert code == 0
    assert under(modules, *TLS_MODULES) == []


def test_a_plain_send_loads_neither_ssl_nor_uvloop(tmp_path: Path) -> None:
    """asyncio comes without ssl (libssl), and a copy that only sends runs on asyncio's
    own loop (uvloop would load ssl); a get still runs on uvloop, which loads it."""
    token = write_token(tmp_path / "token")
    (tmp_path / "f").write_text("f")
    with ServerThread(tmp_path) as server:
        options = ("-P", str(server.port), "--token-file", str(token))
        code, _out, sent = loaded_by("send", *options, str(tmp_path / "f"), "127.0.0.1:g")
        assert code == 0
        code, _out, got = loaded_by("get", *options, "127.0.0.1:g", str(tmp_path / "h"))
        assert code == 0
    assert (tmp_path / "h").read_text() == "f"
    assert "asyncio" in sent and under(sent, "ssl", "_ssl", "uvloop") == []
    assert {"ssl", "uvloop"} <= got


def test_a_tls_transfer_loads_it(tmp_path: Path) -> None:
    from sockferry.tls import make_self_signed, server_tls  # noqa: PLC0415

    token = write_token(tmp_path / "token")
    make_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", ["127.0.0.1"])
    tls = server_tls(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    with ServerThread(tmp_path, tls=tls) as server:
        code, _out, modules = loaded_by("ls", "-P", str(server.port), "--token-file",
                                        str(token), "--fingerprint",
                                        tls.fingerprint.hex(), "127.0.0.1:")
    assert code == 0
    assert "sockferry.tlsstream" in modules and "cryptography" in modules

"""CPU per transfer, checkout against checkout: where bench/run times a tree of small
files (or a large file) end to end against rsync (or nc), this says what each side
spent on it, to compare two versions of sockferry on a noisy machine (CPU seconds vary
less than wall time).

    python bench/tree_cpu.py [--rounds N] [--files N] CHECKOUT [CHECKOUT ...]
    python bench/tree_cpu.py --bulk-mib 1024 [--rounds N] CHECKOUT [CHECKOUT ...]

Each CHECKOUT (a directory holding src/sockferry) gets its own server on tmpfs; the
checkouts take turns, round by round, each sending the same tree of 4 KiB files
(`send -r`, default settings) into a fresh directory.  Reported per checkout: the
server's CPU seconds (from /proc), the client's (its rusage) and the wall time, median
and minimum over the rounds.  With ``--bulk-mib N`` the workload is one file of N MiB
instead, sent (``send``) and fetched back (``get``) each round: reported per checkout and
direction, MB/s and both sides' CPU seconds.  ``--tls`` runs the servers with ``--tls``
(a certificate made on first use, next to the token) and the clients pinning it.  The
interpreter is the one running this script.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILE_BYTES = 4096
DIRECTORIES = 10


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _make_tree(top: Path, files: int) -> None:
    for d in range(DIRECTORIES):
        (top / f"d{d}").mkdir(parents=True)
    for i in range(files):
        (top / f"d{i % DIRECTORIES}" / f"f{i}").write_bytes(os.urandom(FILE_BYTES))


def _wait_listening(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 20) -> None:
    import socket  # noqa: PLC0415

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"a server exited with {proc.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"no server listening on port {port} after {deadline_s:g} s")


def _commands(args: argparse.Namespace, work: Path, root: Path, port: int,
              ) -> list[tuple[list[str], Path]]:
    """One round's sockferry commands for one checkout, each with the target to clear
    just before it runs.  Just before: this VM hands freed memory back to its host within
    seconds, and a file written into memory handed back costs several times the CPU
    (a get run two seconds after its target was freed took 4 s of CPU, not 1)."""
    if args.bulk_mib:
        return [(["send", str(work / "bulk"), f"127.0.0.1:{port}:"], root / "bulk"),
                (["get", f"127.0.0.1:{port}:bulk", str(work / "back")], work / "back")]
    return [(["send", "-r", str(work / "tree"), f"127.0.0.1:{port}:dest/"], root / "dest")]


def _clear(target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)


def _fingerprint(cert: Path) -> str:
    done = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint",
                           "-sha256"], check=True, capture_output=True, text=True)
    return done.stdout.strip().split("=", 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path, metavar="CHECKOUT")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--bulk-mib", type=int, default=0, metavar="N",
                        help="one file of N MiB sent and fetched back, not a tree")
    parser.add_argument("--tls", action="store_true", help="every transfer over TLS")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sockferry-tree-cpu-", dir="/dev/shm"))
    token = work / "token"
    token.write_text(os.urandom(32).hex() + "\n")
    token.chmod(0o600)
    if not args.bulk_mib:
        _make_tree(work / "tree", args.files)
    runs: list[Run] = []
    try:
        for i, checkout in enumerate(args.checkouts):
            env = dict(os.environ, PYTHONPATH=str(checkout.resolve() / "src"))
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # start-up as users have it
            root = work / f"root{i}"
            root.mkdir()
            port = 23600 + i
            tls = ["--tls"] if args.tls else []
            server = subprocess.Popen(
                [sys.executable, "-m", "sockferry", "serve", str(root), "--listen",
                 f"127.0.0.1:{port}", "--token-file", str(token), "-q", *tls],
                env=env, stderr=subprocess.DEVNULL)
            runs.append((checkout, env, root, port, server, [], [], []))
            _wait_listening(port, server)
        pin = ["--fingerprint", _fingerprint(work / "tls-cert.pem")] if args.tls else []
        if args.bulk_mib:
            with open(work / "bulk", "wb") as file:
                for _ in range(args.bulk_mib):
                    file.write(os.urandom(1024 * 1024))
        for _ in range(args.rounds):
            for _checkout, env, root, port, server, server_cpu, client_cpu, wall in runs:
                commands = _commands(args, work, root, port)
                for command, target in commands:  # send, then get: one sample each
                    _clear(target)
                    before = _cpu_seconds(server.pid)
                    used = resource.getrusage(resource.RUSAGE_CHILDREN)
                    start = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "sockferry", *command,
                                    "--token-file", str(token), "-q", *pin], env=env,
                                   check=True)
                    wall.append(time.perf_counter() - start)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    server_cpu.append(_cpu_seconds(server.pid) - before)
                    client_cpu.append(after.ru_utime + after.ru_stime
                                      - used.ru_utime - used.ru_stime)
    finally:
        for run in runs:
            run[4].terminate()
            run[4].wait()
        shutil.rmtree(work, ignore_errors=True)
    _report(args, runs)


Run = tuple[Path, dict[str, str], Path, int, "subprocess.Popen[bytes]", list[float],
            list[float], list[float]]


def _report(args: argparse.Namespace, runs: list[Run]) -> None:
    median = statistics.median
    if args.bulk_mib:
        print(f"{args.bulk_mib} MiB sent and fetched back, {args.rounds} rounds, median "
              "(min-max); CPU in seconds")
        mb = args.bulk_mib * 1024 * 1024 / 1e6
        for checkout, _env, _root, _port, _server, server_cpu, client_cpu, wall in runs:
            for name, at in (("send", 0), ("get", 1)):
                rates = [mb / w for w in wall[at::2]]
                print(f"{checkout!s:32s} {name:4s} {median(rates):7,.0f} MB/s "
                      f"({min(rates):,.0f}-{max(rates):,.0f})  server CPU "
                      f"{median(server_cpu[at::2]):.2f}  client CPU "
                      f"{median(client_cpu[at::2]):.2f}")
        return
    print(f"{args.files:,} files of {FILE_BYTES} bytes, {args.rounds} rounds, "
          "median (minimum) in seconds")
    for checkout, _env, _root, _port, _server, server_cpu, client_cpu, wall in runs:
        print(f"{checkout!s:32s} server CPU {median(server_cpu):.3f} "
              f"({min(server_cpu):.3f})  client CPU {median(client_cpu):.3f} "
              f"({min(client_cpu):.3f})  wall {median(wall):.3f} ({min(wall):.3f})")

if __name__ == "__main__":
    main()

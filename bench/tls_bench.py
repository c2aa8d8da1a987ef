#!/usr/bin/env python3
"""What TLS costs: 1 GiB ``send`` over loopback, tmpfs both sides, in one run:

  sockferry --tls (pinned fingerprint)  vs  sockferry without TLS  vs  scp -c aes128-gcm

scp runs against a private sshd on a free loopback port with throwaway keys; the
sockferry server with --tls makes its self-signed certificate on first use, and the
client pins its fingerprint (as printed by ``openssl x509``).  Each round runs every tool
once, the order rotating; unpinned and pinned (servers and receivers on CPU 1, clients
on CPU 0) as in suite.py, whose helpers this reuses.  Every sample is checked (size).
Writes OUT/tls.md and OUT/tls.json (raw samples).

    .venv/bin/python bench/tls_bench.py [--rounds 5] [--mib 1024]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from suite import (
    HERE,
    MODES,
    SCP_CIPHER,
    SRC,
    Bench,
    BenchError,
    MiB,
    Processes,
    Sizes,
    SshSetup,
    Table,
    Tool,
    check_size,
    fresh_dir,
    git_revision,
    install_missing,
    interrupt,
    machine,
    markdown,
    median,
    run_checked,
    run_rounds,
    sockferry_command,
    timed,
    transfer_timeout,
    user,
    write_random,
)

TLS, PLAIN, SCP = "sockferry --tls", "sockferry", f"scp -c {SCP_CIPHER}"


def fingerprint(cert: Path) -> str:
    done = run_checked(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint",
                        "-sha256"], "openssl x509", 30, stdout=subprocess.PIPE)
    return done.stdout.decode().strip()


def case_tls(b: Bench) -> Table:
    source = b.shm / "bulk.bin"
    write_random(source, b.sizes.bulk_bytes)
    size = source.stat().st_size
    table = Table("t", f"{size // MiB} MiB send (client → server), tmpfs: the cost of TLS",
                  "MB/s", "higher", reference=TLS)
    table.notes.append(
        "Time until the receiving side holds the whole file: sockferry until `send` exits "
        "(after COMMITTED: digest checked, fsynced, renamed), scp until it exits. "
        "`sockferry --tls`: TLS 1.3 (OpenSSL's default suite, TLS_AES_256_GCM_SHA384), "
        "the client pinning the server's fingerprint; file bytes are read and encrypted in "
        "user space and copied into the file at the receiver (no sendfile, no splice). "
        "`sockferry`: the same without TLS. MB = 10^6 bytes; ratios "
        "are sockferry --tls over each tool.")
    timeout_s = transfer_timeout(size)
    roots = {name: fresh_dir(b.shm / name) for name in ("tls", "plain", "scp")}
    for mode in MODES:
        with b.sockferry_server(mode, roots["tls"], "--tls") as (tls_port, _), \
                b.sockferry_server(mode, roots["plain"]) as (plain_port, _), \
                b.sshd(mode) as ssh_port:
            pin = fingerprint(b.token.parent / "tls-cert.pem")

            def ferry(port: int, root: Path, *extra: str, mode: str = mode,
                      name: str = "") -> float:
                seconds = timed(b.pin_client(mode, [*b.sockferry, "send",
                                                    *b.client_options(port), *extra,
                                                    str(source), "127.0.0.1:copy.bin"]),
                                name, timeout_s, env=b.env)
                check_size(root / "copy.bin", size, name)
                return seconds

            def scp(port: int = ssh_port, mode: str = mode) -> float:
                target = roots["scp"] / "copy.bin"
                seconds = timed(b.scp(mode, port, "-c", SCP_CIPHER, str(source),
                                      f"{user()}@127.0.0.1:{target}"), "scp", timeout_s)
                check_size(target, size, "scp")
                return seconds

            def cleaner(root: Path) -> Callable[[], None]:
                return lambda: (root / "copy.bin").unlink(missing_ok=True)

            tools = [
                Tool(TLS, lambda p=tls_port, m=mode, fp=pin: ferry(
                    p, roots["tls"], "--fingerprint", fp, mode=m, name=TLS),
                     cleaner(roots["tls"])),
                Tool(PLAIN, lambda p=plain_port, m=mode: ferry(p, roots["plain"], mode=m,
                                                               name=PLAIN),
                     cleaner(roots["plain"])),
                Tool(SCP, scp, cleaner(roots["scp"])),
            ]
            run_rounds(table, mode, tools, b.args.rounds, size / 1e6, b.say)
    return table


def summary(table: Table) -> list[str]:
    lines = []
    for mode in MODES:
        per = table.samples.get(mode, {})
        tls = median(per.get(TLS, []))
        lines.append(f"{mode}: TLS {tls:,.0f} MB/s = {tls / median(per[SCP]):.2f}x scp "
                     f"(target 1.5x), {tls / median(per[PLAIN]):.2f}x sockferry without TLS "
                     "(target 0.8x)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.rounds < 1 or args.mib < 1:
        parser.error("--rounds and --mib must be at least 1")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    if not shutil.which("openssl"):
        print("bench: openssl is needed (apt-get install openssl)", file=sys.stderr)
        return 1
    procs = Processes()
    shm = Path(tempfile.mkdtemp(prefix="sockferry-tls-bench-", dir="/dev/shm"))
    command = shlex.join(["bench/tls_bench.py", *sys.argv[1:]])
    sockferry, how = sockferry_command()
    try:
        install_missing(print)
        with open(shm / "processes.log", "w") as log:
            token = shm / "token"
            token.write_text(os.urandom(24).hex() + "\n")
            token.chmod(0o600)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            bench = Bench(args, Sizes(bulk_bytes=args.mib * MiB), procs, shm, shm,
                          sockferry, how, token, {**env, "PYTHONPATH": str(SRC)},
                          SshSetup.create(shm / "ssh"), log)
            print(f"sockferry run as {how}; temporary files in {shm}", flush=True)
            table = case_tls(bench)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(shm, ignore_errors=True)
    meta = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(), "command": command, "revision": git_revision(),
            "sockferry": how, "rounds": args.rounds, "quick": False}
    report = markdown([table], meta).replace("# sockferry benchmark suite",
                                             "# sockferry: the cost of TLS", 1)
    report += "\n" + "\n".join(f"- {line}" for line in summary(table)) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tls.md").write_text(report)
    (args.out / "tls.json").write_text(json.dumps({**meta, "samples": table.samples},
                                                  indent=1))
    print(f"\nwrote {args.out / 'tls.md'} and tls.json\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

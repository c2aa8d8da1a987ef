"""Run one target under atheris: ``python fuzz/fuzz.py TARGET SECONDS``.

Starts from fuzz/corpus/TARGET (new inputs that reach new code are added there, in
fuzz/corpus/TARGET/found/, which git ignores); a crash is written to fuzz/findings/.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent

with atheris.instrument_imports(include=["sockferry"]):
    sys.path.insert(0, str(HERE))
    from targets import TARGETS  # imported under instrumentation


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: fuzz.py {{{','.join(TARGETS)}}} SECONDS")
    name, seconds = sys.argv[1], int(sys.argv[2])
    logging.disable(logging.CRITICAL)  # KernelEvents logs what it drops; not findings
    seeds = HERE / "corpus" / name
    found = seeds / "found"
    findings = HERE / "findings"
    found.mkdir(parents=True, exist_ok=True)
    findings.mkdir(exist_ok=True)
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-timeout=10",
                   "-rss_limit_mb=1024", f"-artifact_prefix={findings}/{name}-",
                   "-print_final_stats=1", str(found), str(seeds)], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()

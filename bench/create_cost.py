"""What the system calls of one small file cost a receiver, without any protocol: the
floor under sockferry's (and rsync's) per-file work on a tree of small files.

    python bench/create_cost.py [--rounds 5] [--files 10000] [--dir /dev/shm]

Each round writes FILES files of 4 KiB into a fresh directory in three ways, the order
rotating: ``temporary + rename`` (what sockferry and rsync do: create a temporary name
with O_EXCL, write, close, rename over the final name — nothing half-written is ever
visible under the final name), ``O_TMPFILE + link`` (an unnamed file linked in when
complete; it cannot replace an existing file), and ``final name directly`` (create,
write, close: cheaper, but a reader or a crash can meet a half-written file, so
sockferry does not do it).  Reported: microseconds per file, median and min-max, in a
bare Python loop (so a few microseconds of it are the interpreter's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

DATA = os.urandom(4096)
FLAGS = os.O_WRONLY | os.O_CLOEXEC


def temporary_and_rename(dir_fd: int, files: int) -> None:
    for i in range(files):
        temp = f".sf-{i}.tmp"
        fd = os.open(temp, FLAGS | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                     dir_fd=dir_fd)
        os.write(fd, DATA)
        os.close(fd)
        os.rename(temp, f"f{i}", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def tmpfile_and_link(dir_fd: int, files: int) -> None:
    for i in range(files):
        fd = os.open(".", FLAGS | os.O_TMPFILE, 0o644, dir_fd=dir_fd)
        os.write(fd, DATA)
        os.link(f"/proc/self/fd/{fd}", f"f{i}", dst_dir_fd=dir_fd, follow_symlinks=True)
        os.close(fd)


def final_name_directly(dir_fd: int, files: int) -> None:
    for i in range(files):
        fd = os.open(f"f{i}", FLAGS | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
        os.write(fd, DATA)
        os.close(fd)


WAYS: list[tuple[str, Callable[[int, int], None]]] = [
    ("temporary + rename", temporary_and_rename),
    ("O_TMPFILE + link", tmpfile_and_link),
    ("final name directly", final_name_directly),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sockferry-create-cost-", dir=args.dir))
    samples: dict[str, list[float]] = {name: [] for name, _ in WAYS}
    try:
        for round_ in range(args.rounds):
            shift = round_ % len(WAYS)
            for name, way in WAYS[shift:] + WAYS[:shift]:
                target = work / "target"
                target.mkdir()
                dir_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
                start = time.perf_counter()
                way(dir_fd, args.files)
                samples[name].append((time.perf_counter() - start) * 1e6 / args.files)
                os.close(dir_fd)
                assert len(os.listdir(target)) == args.files
                shutil.rmtree(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.files:,} files of 4 KiB in {args.dir}, {args.rounds} rounds; "
          "µs per file, median (min–max)\n")
    print("| way | µs per file |\n|---|---|")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values):.1f} ({min(values):.1f}–"
              f"{max(values):.1f}) |")


if __name__ == "__main__":
    main()

"""End to end over real sockets: the CLI against a server on loopback."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from sockferry.addresses import HostPort, UnixPath
from sockferry.cli.runtime import ExitCode
from sockferry.storage.names import is_temporary_name
from tests.ferry.harness import ServerThread, run_cli, send_at_once

MiB = 1024 * 1024


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_temporary_name(p.name)]


def cli(server: ServerThread, token: Path, *argv: str) -> tuple[int, str, str]:
    return run_cli(argv[0], "-P", str(server.port), "--token-file", str(token), *argv[1:])


@pytest.mark.parametrize(("size", "mode"), [(0, 0o600), (1, 0o640), (MiB + 1, 0o755),
                                            (300 * MiB, 0o644)],
                         ids=["0B", "1B", "1MiB+1", "300MiB"])
def test_round_trip_keeps_bytes_and_mode(env: dict[str, Path], size: int, mode: int) -> None:
    source = env["src"] / "file.bin"
    with open(source, "wb") as f:
        remaining = size
        while remaining:
            n = min(remaining, 8 * MiB)
            f.write(os.urandom(n))
            remaining -= n
    source.chmod(mode)
    with ServerThread(env["root"]) as server:
        code, _, err = cli(server, env["token"], "send", str(source), "127.0.0.1:")
        assert code == ExitCode.OK, err
        stored = env["root"] / "file.bin"
        code, _, err = cli(server, env["token"], "get", "127.0.0.1:file.bin", str(env["back"]))
        assert code == ExitCode.OK, err
    back = env["back"] / "file.bin"
    assert stored.stat().st_size == back.stat().st_size == size
    assert digest(source) == digest(stored) == digest(back)
    assert stat.S_IMODE(stored.stat().st_mode) == mode
    assert stat.S_IMODE(back.stat().st_mode) == mode & ~0o022 or \
        stat.S_IMODE(back.stat().st_mode) == mode & ~_umask()
    assert not temporaries(env["root"]) and not temporaries(env["back"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_sparse_file_over_4_gib(env: dict[str, Path]) -> None:
    """64-bit sizes end to end; holes travel as HOLE frames, so this takes seconds."""
    size = 4 * 1024**3 + 12345
    source = env["src"] / "sparse.img"
    with open(source, "wb") as f:
        f.truncate(size)
        for offset in (0, 2**32 - 3, size - 7):  # data straddling the 4 GiB mark too
            f.seek(offset)
            f.write(b"sockferry"[: min(9, size - offset)])
    with ServerThread(env["root"]) as server:
        code, _, err = cli(server, env["token"], "send", str(source), "127.0.0.1:")
        assert code == ExitCode.OK, err
        code, _, err = cli(server, env["token"], "get", "127.0.0.1:sparse.img",
                           str(env["back"] / "copy.img"))
        assert code == ExitCode.OK, err
    for path in (env["root"] / "sparse.img", env["back"] / "copy.img"):
        st = path.stat()
        assert st.st_size == size
        assert st.st_blocks * 512 < 64 * MiB, "holes stayed holes"
        with open(path, "rb") as f:
            f.seek(2**32 - 3)
            assert f.read(9) == b"sockferry"
            f.seek(size - 7)
            assert f.read() == b"sockfer"
            f.seek(2**31)
            assert f.read(16) == bytes(16)


def test_recursive_tree_with_nested_and_empty_dirs(env: dict[str, Path]) -> None:
    tree = env["src"] / "tree"
    (tree / "a" / "b" / "c").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "a" / "deeper-empty").mkdir()
    (tree / "top.txt").write_text("top")
    (tree / "a" / "b" / "c" / "leaf.bin").write_bytes(os.urandom(70_000))
    (tree / "a" / "x.txt").write_text("x")
    (tree / "a" / "b").chmod(0o750)
    with ServerThread(env["root"]) as server:
        code, _, err = cli(server, env["token"], "send", "-r", str(tree), "127.0.0.1:")
        assert code == ExitCode.OK, err
        code, _, err = cli(server, env["token"], "get", "-r", "127.0.0.1:tree",
                           str(env["back"]))
        assert code == ExitCode.OK, err
    put_lines = [line for line in server.logs if " PUT 'tree/a/b/c/leaf.bin' " in line]
    assert len(put_lines) == 1 and put_lines[0].endswith(": ok")
    assert "68.4 KiB in " in put_lines[0] and "/s)" in put_lines[0]
    for copy in (env["root"] / "tree", env["back"] / "tree"):
        assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == \
            sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
        assert (copy / "a" / "b" / "c" / "leaf.bin").read_bytes() == \
            (tree / "a" / "b" / "c" / "leaf.bin").read_bytes()
        assert (copy / "empty").is_dir() and (copy / "a" / "deeper-empty").is_dir()
    assert stat.S_IMODE((env["root"] / "tree" / "a" / "b").stat().st_mode) == 0o750


def test_directory_without_r_is_refused(env: dict[str, Path]) -> None:
    (env["src"] / "d").mkdir()
    with ServerThread(env["root"]) as server:
        code, _, err = cli(server, env["token"], "send", str(env["src"] / "d"), "127.0.0.1:")
    assert code == ExitCode.STORAGE
    assert "is a directory (use -r to copy trees)" in err


def test_scp_destination_rules(env: dict[str, Path]) -> None:
    (env["src"] / "one").write_text("1")
    (env["src"] / "two").write_text("2")
    (env["root"] / "dir").mkdir()
    with ServerThread(env["root"]) as server:
        assert cli(server, env["token"], "send", str(env["src"] / "one"),
                   "127.0.0.1:renamed")[0] == 0
        assert cli(server, env["token"], "send", str(env["src"] / "one"),
                   "127.0.0.1:dir")[0] == 0
        assert cli(server, env["token"], "send", str(env["src"] / "one"),
                   str(env["src"] / "two"), "127.0.0.1:dir/")[0] == 0
        code, _, err = cli(server, env["token"], "send", str(env["src"] / "one"),
                           str(env["src"] / "two"), "127.0.0.1:renamed")
        assert code == ExitCode.USAGE and "is not a directory" in err
        code, _, err = cli(server, env["token"], "send", str(env["src"] / "one"),
                           "127.0.0.1:missing/")
        assert code == ExitCode.REFUSED and "does not exist" in err
    assert (env["root"] / "renamed").read_text() == "1"
    assert sorted(p.name for p in (env["root"] / "dir").iterdir()) == ["one", "two"]


def test_preserve_mtime_and_umask(env: dict[str, Path]) -> None:
    source = env["src"] / "f"
    source.write_text("data")
    source.chmod(0o777)
    os.utime(source, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    with ServerThread(env["root"], umask=0o027) as server:
        assert cli(server, env["token"], "send", "-p", str(source), "127.0.0.1:p")[0] == 0
        assert cli(server, env["token"], "send", str(source), "127.0.0.1:n")[0] == 0
        assert cli(server, env["token"], "get", "-p", "127.0.0.1:p",
                   str(env["back"] / "p"))[0] == 0
    assert (env["root"] / "p").stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert (env["root"] / "n").stat().st_mtime_ns != 1_600_000_000_123_456_789
    assert (env["back"] / "p").stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert stat.S_IMODE((env["root"] / "p").stat().st_mode) == 0o750


def test_setuid_bits_never_travel(env: dict[str, Path]) -> None:
    source = env["src"] / "suid"
    source.write_text("x")
    source.chmod(0o6755)
    with ServerThread(env["root"], umask=0) as server:
        assert cli(server, env["token"], "send", str(source), "127.0.0.1:")[0] == 0
    assert stat.S_IMODE((env["root"] / "suid").stat().st_mode) == 0o755


def test_no_clobber(env: dict[str, Path]) -> None:
    (env["root"] / "f").write_text("original")
    (env["src"] / "f").write_text("new")
    with ServerThread(env["root"], clobber=False) as server:
        code, _, err = cli(server, env["token"], "send", str(env["src"] / "f"), "127.0.0.1:")
    assert code == ExitCode.REFUSED
    assert "already exists" in err
    assert (env["root"] / "f").read_text() == "original"
    assert not temporaries(env["root"])


def test_ls(env: dict[str, Path]) -> None:
    (env["root"] / "sub").mkdir()
    (env["root"] / "sub" / "f").write_bytes(b"12345")
    with ServerThread(env["root"]) as server:
        code, out, err = cli(server, env["token"], "ls", "-R", "127.0.0.1:")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("drwx") and lines[0].endswith(" sub/")
        assert lines[1].startswith("-rw") and lines[1].endswith(" sub/f")
        assert " 5 " in lines[1]
        code, _, err = cli(server, env["token"], "ls", "127.0.0.1:nope")
        assert code == ExitCode.REFUSED and "does not exist" in err


def test_get_missing_file(env: dict[str, Path]) -> None:
    with ServerThread(env["root"]) as server:
        code, _, err = cli(server, env["token"], "get", "127.0.0.1:absent", str(env["back"]))
    assert code == ExitCode.REFUSED
    assert "sockferry: error: 'absent' does not exist" in err.splitlines()
    assert not list(env["back"].iterdir())


def test_fifty_clients_at_once(env: dict[str, Path]) -> None:
    payloads = {f"c{i}.bin": os.urandom(20_000 + i * 1013) for i in range(50)}
    for name, data in payloads.items():
        (env["src"] / name).write_bytes(data)

    with ServerThread(env["root"]) as server:
        send_at_once(server.port, [env["src"] / name for name in payloads])
    for name, data in payloads.items():
        assert (env["root"] / name).read_bytes() == data


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "hostname", "unix"])
def test_address_families(env: dict[str, Path], family: str, tmp_path: Path) -> None:
    (env["src"] / "f").write_bytes(b"over " + family.encode())
    sock = str(tmp_path / "ferry.sock")
    listen = {"ipv4": HostPort("127.0.0.1", 0), "ipv6": HostPort("::1", 0),
              "hostname": HostPort("localhost", 0), "unix": UnixPath(sock)}[family]
    with ServerThread(env["root"], [listen]) as server:
        base = ["--token-file", str(env["token"])]
        if family == "unix":
            base += ["--unix", sock]
            dest = ":"
        else:
            base += ["-P", str(server.port)]
            dest = {"ipv4": "127.0.0.1:", "ipv6": "[::1]:", "hostname": "localhost:"}[family]
        code, _, err = run_cli("send", *base, str(env["src"] / "f"), dest)
        assert code == ExitCode.OK, err
        code, _, err = run_cli("get", *base, dest + "f", str(env["back"] / "f"))
        assert code == ExitCode.OK, err
    assert (env["back"] / "f").read_bytes() == b"over " + family.encode()
    if family == "hostname":
        assert {"127.0.0.1", "[::1]"} <= {a.rsplit(":", 1)[0] for a in server.addresses}

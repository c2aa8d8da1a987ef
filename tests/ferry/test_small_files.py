"""Trees of small files: every durability mode, PUT_INLINE against older peers, order."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from sockferry.addresses import HostPort
from sockferry.admission import Startups
from sockferry.cli.runtime import ExitCode
from sockferry.ferry import messages as m
from sockferry.ferry.client import FerryClient
from sockferry.ferry.copy_send import send_paths
from sockferry.ferry.puts import INLINE_FILE
from sockferry.storage.durability import Durability
from sockferry.storage.names import is_temporary_name
from tests.ferry.harness import TOKEN, ServerThread, run, run_cli, send_at_once

# Around every size boundary of the sending side: empty, inline, the last inline size,
# the first PUT, a small PUT gathered with others, and a body that goes by sendfile.
SIZES = [0, 1, 4096, INLINE_FILE, INLINE_FILE + 1, 70_000, 300 * 1024]


def make_tree(top: Path, dirs: int = 4, per_dir: int = 30) -> dict[str, bytes]:
    """A tree with files of every size above in nested and empty directories."""
    files: dict[str, bytes] = {}
    for d in range(dirs):
        directory = top / f"d{d}" / "inner"
        directory.mkdir(parents=True)
        for i in range(per_dir):
            data = os.urandom(SIZES[(d * per_dir + i) % len(SIZES)])
            rel = f"d{d}/inner/f{i:03d}"
            (top / rel).write_bytes(data)
            (top / rel).chmod(0o600 + (i % 8) * 0o10)
            files[rel] = data
    (top / "empty").mkdir()
    return files


def check_tree(copy: Path, source: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (copy / rel).read_bytes() == data, rel
        assert stat.S_IMODE((copy / rel).stat().st_mode) == \
            stat.S_IMODE((source / rel).stat().st_mode) & ~0o022
    assert (copy / "empty").is_dir()
    assert not [p for p in copy.rglob("*") if is_temporary_name(p.name)]


def cli(server: ServerThread, token: Path, *argv: str) -> tuple[int, str, str]:
    return run_cli(argv[0], "-P", str(server.port), "--token-file", str(token), *argv[1:])


@pytest.mark.parametrize("durability", list(Durability), ids=[d.value for d in Durability])
def test_every_fsync_mode_writes_the_whole_tree(env: dict[str, Path],
                                                durability: Durability) -> None:
    tree = env["src"] / "tree"
    files = make_tree(tree)
    with ServerThread(env["root"], durability=durability) as server:
        code, _, err = cli(server, env["token"], "send", "-r", str(tree), "127.0.0.1:")
        assert code == ExitCode.OK, err
        code, _, err = cli(server, env["token"], "get", "-r", "127.0.0.1:tree",
                           str(env["back"]))
        assert code == ExitCode.OK, err
    check_tree(env["root"] / "tree", tree, files)
    check_tree(env["back"] / "tree", tree, files)


@pytest.mark.parametrize("older", ["client", "server"])
def test_a_peer_without_inline_still_gets_every_file(env: dict[str, Path],
                                                     older: str) -> None:
    """A version-1 peer that does not know PUT_INLINE: the files go as PUT, DATA, DONE."""
    tree = env["src"] / "tree"
    files = make_tree(tree, dirs=2, per_dir=14)
    without = m.ALL_FEATURES & ~m.Feature.INLINE
    client_features = without if older == "client" else m.ALL_FEATURES
    server_features = without if older == "server" else m.ALL_FEATURES

    async def send(port: int) -> None:
        client = await FerryClient.connect(HostPort("127.0.0.1", port), TOKEN,
                                           features=client_features)
        assert not client.session.features & m.Feature.INLINE
        outcomes = await send_paths(client, [str(tree)], "", recursive=True,
                                    keep_mtime=False)
        assert [o.error for o in outcomes if o.error] == []

    with ServerThread(env["root"], features=server_features) as server:
        run(send(server.port))
    check_tree(env["root"] / "tree", tree, files)


@pytest.mark.parametrize("durability", [Durability.BATCH, Durability.NONE],
                         ids=["batch", "none"])
def test_pipelined_puts_of_one_path_commit_in_request_order(env: dict[str, Path],
                                                            durability: Durability) -> None:
    versions = [os.urandom(1000 + i) for i in range(60)]
    for i, data in enumerate(versions):
        (env["src"] / f"v{i}").write_bytes(data)

    async def send_all(port: int) -> None:
        client = await FerryClient.connect(HostPort("127.0.0.1", port), TOKEN)
        futures = [await client.puts.start_put(str(env["src"] / f"v{i}"), "same")
                   for i in range(len(versions))]
        await client.finish()
        assert [f.result() for f in futures] == [len(v) for v in versions]

    with ServerThread(env["root"], durability=durability) as server:
        run(send_all(server.port))
    assert (env["root"] / "same").read_bytes() == versions[-1]


@pytest.mark.parametrize("sizes", [[9 << 20, 1000, 9 << 20, 2000, 3000],
                                   [1000, 9 << 20, 2000, 9 << 20]],
                         ids=["small-last", "large-last"])
def test_large_and_small_puts_of_one_path_commit_in_request_order(
        env: dict[str, Path], sizes: list[int]) -> None:
    """A large body is hashed in a worker thread and verified late; the small files
    pipelined behind it (PUT_INLINE, verified at once) must still not be replaced by it."""
    versions = [os.urandom(size) for size in sizes]
    for i, data in enumerate(versions):
        (env["src"] / f"v{i}").write_bytes(data)
    names = ["same", "./same", "same", "same", "same"]  # one path, spelt two ways

    async def send_all(port: int) -> None:
        client = await FerryClient.connect(HostPort("127.0.0.1", port), TOKEN)
        futures = [await client.puts.start_put(str(env["src"] / f"v{i}"), names[i])
                   for i in range(len(versions))]
        await client.finish()
        assert [f.result() for f in futures] == sizes

    for trial in range(3):
        with ServerThread(env["root"]) as server:
            run(send_all(server.port))
        assert (env["root"] / "same").read_bytes() == versions[-1], f"trial {trial}"


def test_many_clients_sending_trees_at_once(env: dict[str, Path]) -> None:
    """Every connection's bytes pass through the one shared receive buffer: none may
    see another's."""
    trees = {}
    for c in range(12):
        top = env["src"] / f"t{c}"
        trees[c] = make_tree(top, dirs=2, per_dir=10)

    with ServerThread(env["root"]) as server:
        send_at_once(server.port, [env["src"] / f"t{c}" for c in trees], recursive=True)
    for c, files in trees.items():
        check_tree(env["root"] / f"t{c}", env["src"] / f"t{c}", files)


def test_a_refused_small_file_does_not_stop_the_others(env: dict[str, Path]) -> None:
    tree = env["src"] / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "ok1").write_bytes(b"one")
    (tree / "a" / "blocked").write_bytes(b"two")
    (tree / "a" / "ok2").write_bytes(b"three")
    (env["root"] / "tree" / "a" / "blocked").mkdir(parents=True)  # a directory in the way
    with ServerThread(env["root"]) as server:
        code, _, err = cli(server, env["token"], "send", "-r", str(tree), "127.0.0.1:")
    assert code == ExitCode.REFUSED
    assert "'tree/a/blocked' exists and is a directory" in err
    assert (env["root"] / "tree" / "a" / "ok1").read_bytes() == b"one"
    assert (env["root"] / "tree" / "a" / "ok2").read_bytes() == b"three"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_descriptor_outlives_its_connection(env: dict[str, Path]) -> None:
    """Cached directories, uploads refused half-way and connections that vanish all give
    their descriptors back."""
    tree = env["src"] / "tree"
    make_tree(tree, dirs=3, per_dir=10)
    (env["root"] / "tree" / "d0" / "inner" / "f001").mkdir(parents=True)  # refused
    counts = []
    for attempt in range(2):  # the first run also sets up the event loop's one-time pipes
        counts.append(open_fds())
        with ServerThread(env["root"]) as server:
            for _ in range(2):
                code, _, _ = cli(server, env["token"], "send", "-r", str(tree), "127.0.0.1:")
                assert code == ExitCode.REFUSED
            code, _, err = cli(server, env["token"], "get", "-r", "127.0.0.1:tree",
                               str(env["back"] / str(attempt)))
            assert code == ExitCode.OK, err
    counts.append(open_fds())
    assert counts[1] == counts[2], counts


def test_a_thousand_clients_at_once(env: dict[str, Path]) -> None:
    """1,000 connections, each uploading its own 64 KiB file at the same moment: every
    file committed intact, and every descriptor given back afterwards."""
    import resource  # noqa: PLC0415 - only this test needs more descriptors

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 4 * 1000 + 200  # a socket each side, a temporary and a directory per upload
    if hard < needed:
        pytest.skip(f"the hard limit on open files is {hard}, below {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    payloads = {f"c{i:04d}": os.urandom(64 * 1024) for i in range(1000)}
    for name, data in payloads.items():
        (env["src"] / name).write_bytes(data)

    async def upload(client: FerryClient, name: str) -> object:
        future = await client.puts.start_put(str(env["src"] / name), name)
        await client.finish()
        return future.result()

    async def all_at_once(port: int) -> list[object]:
        connected = await asyncio.gather(*(
            FerryClient.connect(HostPort("127.0.0.1", port), TOKEN, timeout_s=60)
            for _ in payloads), return_exceptions=True)  # all authenticated, then all send
        clients = [c for c in connected if isinstance(c, FerryClient)]
        try:
            for outcome in connected:
                if isinstance(outcome, BaseException):
                    raise outcome
            return await asyncio.gather(*(upload(c, name)
                                          for c, name in zip(clients, payloads, strict=True)))
        finally:
            for client in clients:  # a failed run leaves no socket to the next test
                client.close()

    try:
        before = open_fds()
        # the point is 1,000 uploads at once, not the pre-auth gate (test_preauth.py):
        # every client may authenticate at the same moment
        with ServerThread(env["root"], max_connections=2000,
                          max_startups=Startups(1000, 100, 1000),
                          max_startups_per_source=1000) as server:
            sizes = run(all_at_once(server.port))
            assert server.connection_count() <= 1000
        assert sizes == [64 * 1024] * 1000
        for name, data in payloads.items():
            assert (env["root"] / name).read_bytes() == data
        assert open_fds() <= before + 2  # the event loop's own pipes may stay
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

"""Remote specs with ports (HOST:PORT:PATH, sockferry:// URLs) and -4/-6, against a real
server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockferry.addresses import HostPort
from sockferry.cli.remotes import Remote, parse_remote
from sockferry.cli.runtime import ExitCode
from sockferry.errors import UsageError
from tests.ferry.harness import ServerThread, run_cli, write_token


@pytest.mark.parametrize(("text", "expected"), [
    ("host:a.txt", Remote("host", "a.txt")),
    (":a.txt", Remote("localhost", "a.txt")),
    ("host:2400:a.txt", Remote("host", "a.txt", 2400)),
    ("host:2400:", Remote("host", "", 2400)),
    (":2400:dir/a", Remote("localhost", "dir/a", 2400)),
    ("host:./2400:a", Remote("host", "./2400:a")),  # how to name such a path
    ("host:24x:a", Remote("host", "24x:a")),
    ("[::1]:a.txt", Remote("::1", "a.txt")),
    ("[::1]:2400:a.txt", Remote("::1", "a.txt", 2400)),
    ("sockferry://host:2400/dir/a%20b", Remote("host", "dir/a b", 2400)),
    ("sockferry://host/a", Remote("host", "a")),
    ("sockferry://[::1]:9/x", Remote("::1", "x", 9)),
    ("./local:file", None),
    ("plain", None),
])
def test_remote_specs(text: str, expected: Remote | None) -> None:
    assert parse_remote(text) == expected


@pytest.mark.parametrize("text", ["sockferry://host:99999/a", "sockferry://u@host/a",
                                  "sockferry://host/a?x=1"])
def test_bad_urls_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_remote(text)


def test_a_port_in_the_spec_needs_no_p(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    token = write_token(tmp_path / "token")
    (tmp_path / "a.txt").write_text("a")
    with ServerThread(root) as server:
        code, _, err = run_cli("send", "--token-file", str(token), str(tmp_path / "a.txt"),
                               f"127.0.0.1:{server.port}:copy.txt")
        assert code == ExitCode.OK, err
        code, out, err = run_cli("ls", "--token-file", str(token),
                                 f"sockferry://127.0.0.1:{server.port}/")
        assert code == ExitCode.OK, err
        code, _, err = run_cli("get", "--token-file", str(token),
                               f"sockferry://127.0.0.1:{server.port}/copy.txt",
                               str(tmp_path / "back.txt"))
        assert code == ExitCode.OK, err
    assert "copy.txt" in out
    assert (tmp_path / "back.txt").read_text() == "a"


def test_4_and_6_choose_the_family(tmp_path: Path) -> None:
    token = write_token(tmp_path / "token")
    with ServerThread(tmp_path, addresses=(HostPort("127.0.0.1", 0),)) as server:
        port = str(server.port)
        assert run_cli("ls", "-4", "-P", port, "--token-file", str(token),
                       "localhost:")[0] == ExitCode.OK
        code, _, err = run_cli("ls", "-6", "-P", port, "--token-file", str(token),
                               "localhost:", "--timeout", "3")
    # Only IPv4 listens: over IPv6 nothing answers (or this host has no ::1 at all).
    assert code == ExitCode.NETWORK, err
    assert "::1" in err or "IPv6" in err
    code, _, err = run_cli("ls", "-4", "-6", "localhost:")
    assert code == ExitCode.USAGE


def test_remote_globs_expand_over_the_servers_listing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for name in ("a.txt", "b.txt", ".hidden.txt", "c.log", "sub1/d.txt", "sub2/e.txt",
                 "sub2/f.log", "*"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    token = write_token(tmp_path / "token")

    def get(*argv: str) -> tuple[int, str]:
        code, _, err = run_cli("get", *argv, "-P", str(server.port), "--token-file",
                               str(token))
        return code, err

    with ServerThread(root) as server:
        for pattern, expected in (("*.txt", ["a.txt", "b.txt"]),
                                  ("sub[12]/*.txt", ["d.txt", "e.txt"]),
                                  ("sub?/f.l?g", ["f.log"]),
                                  ("\\*", ["*"])):
            dest = tmp_path / f"dest-{len(list(tmp_path.iterdir()))}"
            dest.mkdir()
            code, err = get(f"127.0.0.1:{pattern}", str(dest))
            assert code == 0, err
            assert sorted(os.listdir(dest)) == expected, pattern
        code, err = get("127.0.0.1:*.jpg", str(tmp_path))
        assert code == 5
        assert "no file on the server matches '*.jpg'" in err
        code, err = get("127.0.0.1:*.txt", str(tmp_path / "one-file"))
        assert code == 2
        assert "need a directory as destination" in err

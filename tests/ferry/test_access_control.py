"""serve --allow/--deny and --read-only over real sockets (TCP, dual-stack, AF_UNIX,
SCTP over UDP), through the real command-line client."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockferry.access import AccessRules
from sockferry.addresses import HostPort, UnixPath
from sockferry.cli.runtime import ExitCode
from sockferry.ferry import codec
from sockferry.ferry import messages as m
from sockferry.storage.names import is_temporary_name
from tests.ferry.harness import RawClient, ServerThread, run_cli

DENY_LOOPBACK = AccessRules.parse(None, ["127.0.0.0/8"])


def ferry(env: dict[str, Path], port: int, verb: str, *argv: str) -> tuple[int, str, str]:
    """The client's exit code, stdout, and what it told the user (the server shares
    this process's stderr: its log lines are left out)."""
    code, out, err = run_cli(verb, "-P", str(port), "--token-file", str(env["token"]),
                             *argv)
    said = "".join(line + "\n" for line in err.splitlines() if line.startswith("sockferry:"))
    return code, out, said


def test_allowed_network_is_served(env: dict[str, Path]) -> None:
    (env["src"] / "a").write_bytes(b"payload")
    rules = AccessRules.parse(["127.0.0.0/8", "2001:db8::/32"], ["10.0.0.0/8"])
    with ServerThread(env["root"], access=rules) as server:
        code, _, err = ferry(env, server.port, "send", str(env["src"] / "a"), "127.0.0.1:")
        assert (code, err) == (ExitCode.OK, "")
    assert (env["root"] / "a").read_bytes() == b"payload"
    assert not [line for line in server.logs if "refused" in line]


def test_denied_peer_gets_a_typed_error_and_one_log_line(env: dict[str, Path]) -> None:
    with ServerThread(env["root"], access=DENY_LOOPBACK) as server:
        code, out, err = ferry(env, server.port, "ls", "127.0.0.1:")
        assert code == ExitCode.REFUSED and out == ""
        assert err == ("sockferry: error: server closed the connection: this server does "
                       "not accept connections from 127.0.0.1 (--allow/--deny)\n")
        assert server.connection_count() == 0  # never became a connection
    refused = [line for line in server.logs if "refused a connection" in line]
    assert len(refused) == 1
    assert refused[0].startswith("refused a connection from 127.0.0.1:")
    assert refused[0].endswith("not allowed by --allow/--deny")


def test_allow_list_that_misses_the_peer_refuses_it(env: dict[str, Path]) -> None:
    rules = AccessRules.parse(["192.0.2.0/24"], None)
    with ServerThread(env["root"], access=rules) as server:
        code, _, err = ferry(env, server.port, "ls", "127.0.0.1:")
    assert code == ExitCode.REFUSED and "not accept connections from 127.0.0.1" in err


def test_dual_stack_listener_judges_ipv4_clients_as_ipv4(env: dict[str, Path]) -> None:
    """On ':PORT' an IPv4 client is ::ffff:127.0.0.1 to the socket; --deny 127.0.0.1
    must still catch it, while ::1 (not denied) is served."""
    rules = AccessRules.parse(None, ["127.0.0.1"])
    with ServerThread(env["root"], [HostPort("", 0)], access=rules) as server:
        code, _, err = ferry(env, server.port, "ls", "127.0.0.1:")
        assert code == ExitCode.REFUSED and "from ::ffff:127.0.0.1" not in err
        assert "not accept connections from 127.0.0.1" in err
        code, _, err = ferry(env, server.port, "ls", "[::1]:")
        assert (code, err) == (ExitCode.OK, "")


def test_unix_listeners_are_not_subject_to_the_rules(env: dict[str, Path],
                                                     tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    (env["root"] / "here").write_bytes(b"x")
    with ServerThread(env["root"], [UnixPath(str(sock))], access=DENY_LOOPBACK):
        code, out, _err = run_cli("ls", "--unix", str(sock), "--token-file",
                                  str(env["token"]), ":")
    assert code == ExitCode.OK and "here" in out


def test_denied_sctp_association_is_aborted_with_the_reason(env: dict[str, Path]) -> None:
    with ServerThread(env["root"], [HostPort("127.0.0.1", 0)], sctp_stack="udp",
                      access=DENY_LOOPBACK) as server:
        code, _, err = run_cli("ls", "--transport", "sctp", "--sctp-stack", "udp",
                               "-P", str(server.port), "--token-file", str(env["token"]),
                               "127.0.0.1:")
        assert server.connection_count() == 0
    assert code == ExitCode.NETWORK
    assert "not allowed by the server's --allow/--deny" in err
    assert len([line for line in server.logs if "refused a connection" in line]) == 1


# -- --read-only ---------------------------------------------------------------------------

READ_ONLY = "this server is read-only: nothing can be written to it"


@pytest.fixture
def read_only(env: dict[str, Path]) -> dict[str, Path]:
    (env["root"] / "old.txt").write_bytes(b"kept")
    (env["src"] / "small").write_bytes(b"tiny")  # PUT_INLINE
    (env["src"] / "big").write_bytes(os.urandom(3 << 20))  # PUT with a body
    return env


def test_read_only_refuses_uploads_but_serves_downloads(read_only: dict[str, Path]) -> None:
    env = read_only
    with ServerThread(env["root"], read_only=True) as server:
        code, _, err = ferry(env, server.port, "send", str(env["src"] / "small"),
                             str(env["src"] / "big"), "127.0.0.1:")
        assert code == ExitCode.REFUSED
        assert err.count(READ_ONLY) == 2, err
        code, _, err = ferry(env, server.port, "send", "--resume", str(env["src"] / "big"),
                             "127.0.0.1:")
        assert code == ExitCode.REFUSED and READ_ONLY in err
        code, _, err = ferry(env, server.port, "send", "-r", str(env["src"]), "127.0.0.1:")
        assert code == ExitCode.REFUSED and READ_ONLY in err  # its MKDIR
        code, _, err = ferry(env, server.port, "get", "127.0.0.1:old.txt", str(env["back"]))
        assert (code, err) == (ExitCode.OK, "")
    assert sorted(p.name for p in env["root"].iterdir()) == ["old.txt"]
    assert (env["back"] / "old.txt").read_bytes() == b"kept"


def test_read_only_refusal_costs_only_that_request(read_only: dict[str, Path]) -> None:
    """Pipelined on one connection: PUT (with its body), MKDIR, PARTIAL are refused with
    READ_ONLY, and the GET behind them is still answered."""
    with ServerThread(read_only["root"], read_only=True) as server:
        raw = RawClient(server.port)
        body = b"z" * 1000
        raw.send(codec.encode(m.Put(1, "new", len(body), 0o644, 0)),
                 codec.data_header(1, len(body)),
                 body, codec.encode(m.Done(1, b"\0" * m.DIGEST_BYTES)),
                 codec.encode(m.Mkdir(3, "dir", 0o755)), codec.encode(m.Get(5, "old.txt")))
        replies = raw.replies(3)
        raw.close()
    errors = {r.request: r for r in replies if isinstance(r, m.Error)}
    assert set(errors) == {1, 3}
    assert all(e.code == m.ErrorCode.READ_ONLY and e.message == READ_ONLY
               for e in errors.values())
    assert any(isinstance(r, m.FileHeader) and r.request == 5 for r in replies)
    assert not [p for p in read_only["root"].iterdir() if is_temporary_name(p.name)]

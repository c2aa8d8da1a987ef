"""The CHANNEL_BINDING feature in the pure cores (docs/protocol.md §3.1), and the token
entropy floor (§3.2)."""

from __future__ import annotations

import base64
import random
import secrets
import statistics
from pathlib import Path

import pytest

from sockferry.cli.runtime import ExitCode
from sockferry.errors import AuthenticationFailed, PeerRefused, RemoteProtocolError, UsageError
from sockferry.ferry import auth, codec
from sockferry.ferry import events as ev
from sockferry.ferry import messages as m
from sockferry.ferry.client_session import ClientSession
from sockferry.ferry.parser import FrameParser
from sockferry.ferry.server_session import ServerSession
from sockferry.ferry.session import ConnState
from sockferry.ferry.tokens import MIN_TOKEN_BITS, estimate_bits, load_token
from tests.ferry.harness import TOKEN, ServerThread, run_cli, write_token
from tests.ferry.test_session import pump

BINDING = b"tls-server-end-point:" + b"\x11" * 32
OTHER = b"tls-server-end-point:" + b"\x22" * 32
OLD_FEATURES = m.ALL_FEATURES & ~m.Feature.CHANNEL_BINDING  # a v1 peer before TLS


def handshake(client: ClientSession, server: ServerSession) -> None:
    client_events, server_events = pump(client, server)
    assert isinstance(client_events[0], ev.ServerVerified)
    assert isinstance(server_events[0], ev.ClientAuthenticated)


def test_bound_handshake_covers_the_binding() -> None:
    client = ClientSession(TOKEN, b"c" * 32, channel_binding=BINDING)
    server = ServerSession(TOKEN, b"s" * 32, channel_binding=BINDING)
    hello = client.data_to_send()
    server.receive_data(hello)
    reply_frame = server.data_to_send()
    [reply] = list(FrameParser().feed(reply_frame))
    assert isinstance(reply, m.HelloReply)
    assert reply.features & m.Feature.CHANNEL_BINDING
    transcript = auth.transcript_hash(hello[m.HEADER.size :], codec.hello_reply_signed_part(reply),
                                      BINDING)
    assert reply.proof == auth.proof(TOKEN, auth.SERVER_LABEL, transcript)
    assert reply.proof != auth.proof(TOKEN, auth.SERVER_LABEL, auth.transcript_hash(
        hello[m.HEADER.size :], codec.hello_reply_signed_part(reply)))
    client.receive_data(reply_frame)
    server.receive_data(client.data_to_send())
    assert server.state is client.state is ConnState.READY


def test_different_bindings_fail_before_the_client_proves_itself() -> None:
    client = ClientSession(TOKEN, b"c" * 32, channel_binding=BINDING)
    server = ServerSession(TOKEN, b"s" * 32, channel_binding=OTHER)
    server.receive_data(client.data_to_send())
    with pytest.raises(AuthenticationFailed):
        client.receive_data(server.data_to_send())
    assert client.data_to_send() == b""  # no AUTH: the relay learns no client proof


def test_plaintext_peers_never_bind_and_v1_peers_are_unchanged() -> None:
    for client_features in (m.ALL_FEATURES, OLD_FEATURES):
        for server_features in (m.ALL_FEATURES, OLD_FEATURES):
            client = ClientSession(TOKEN, b"c" * 32, features=client_features)
            server = ServerSession(TOKEN, b"s" * 32, features=server_features)
            hello = client.data_to_send()
            [parsed] = list(FrameParser().feed(hello))
            assert isinstance(parsed, m.Hello)
            assert not parsed.features & m.Feature.CHANNEL_BINDING
            server.receive_data(hello)
            client.receive_data(server.data_to_send())
            server.receive_data(client.data_to_send())
            assert not client.features & m.Feature.CHANNEL_BINDING
            assert server.state is ConnState.READY


def test_a_bound_client_refuses_a_server_that_drops_the_binding() -> None:
    """A relay that strips the bit would also have to forge the proof; the client does
    not even get that far."""
    client = ClientSession(TOKEN, b"c" * 32, channel_binding=BINDING)
    server = ServerSession(TOKEN, b"s" * 32, features=OLD_FEATURES)
    server.receive_data(client.data_to_send())
    with pytest.raises(RemoteProtocolError, match="did not bind authentication"):
        client.receive_data(server.data_to_send())
    assert client.data_to_send() == b""


def test_a_tls_server_refuses_a_client_that_does_not_bind() -> None:
    client = ClientSession(TOKEN, b"c" * 32, features=OLD_FEATURES, channel_binding=BINDING)
    server = ServerSession(TOKEN, b"s" * 32, channel_binding=BINDING)
    with pytest.raises(RemoteProtocolError, match="binds authentication to the TLS channel"):
        server.receive_data(client.data_to_send())
    with pytest.raises(PeerRefused, match="upgrade the client"):
        client.receive_data(server.data_to_send())


def test_a_tls_hello_at_a_plaintext_server_is_named() -> None:
    server = ServerSession(TOKEN, b"s" * 32)
    client_hello = bytes.fromhex("160301020001") + bytes(600)
    with pytest.raises(RemoteProtocolError, match="speaks TLS but this server runs without"):
        server.receive_data(client_hello)


# ---- the token floor -------------------------------------------------------------------


@pytest.mark.parametrize("token", [
    b"test-token-0123456789abcdef", b"a" * 64, b"0123456789abcdef" * 4,
    b"abcdefghijklmnopqrstuvwxyz0123456789", b"Password1Password1Password1",
    bytes(range(97, 123)) * 3])
def test_guessable_tokens_score_below_the_floor(token: bytes) -> None:
    assert estimate_bits(token) < MIN_TOKEN_BITS


def test_random_tokens_score_near_their_entropy() -> None:
    # Seeded, so a rare run of repeated digits (which rightly costs bits) cannot make
    # this flaky; the margins over the 128-bit floor are what a user relies on.
    rng = random.Random(20261207)
    hex_scores = [estimate_bits(rng.randbytes(24).hex().encode()) for _ in range(2000)]
    url_scores = [estimate_bits(base64.urlsafe_b64encode(rng.randbytes(32)))
                  for _ in range(2000)]
    assert min(hex_scores) > 170 and max(hex_scores) <= 192
    assert 190 < statistics.mean(hex_scores) <= 192
    assert min(url_scores) > 220 and statistics.mean(url_scores) > 250
    assert estimate_bits(secrets.token_urlsafe(32).encode()) > MIN_TOKEN_BITS
    assert estimate_bits(TOKEN) >= MIN_TOKEN_BITS


def test_a_guessable_token_file_is_refused_on_both_sides(tmp_path: Path) -> None:
    weak = write_token(tmp_path / "weak", b"test-token-0123456789abcdef")
    with pytest.raises(UsageError, match=r"guessable token \(about 93 bits, at least 128"):
        load_token(weak)
    code, _out, err = run_cli("serve", str(tmp_path), "--listen", "127.0.0.1:0",
                              "--token-file", str(weak))
    assert code == ExitCode.USAGE
    assert "openssl rand -base64 32" in err
    with ServerThread(tmp_path) as server:
        code, _out, err = run_cli("ls", "-P", str(server.port), "--token-file", str(weak),
                                  "127.0.0.1:")
    assert code == ExitCode.USAGE and "holds a guessable token" in err
    assert server.logs == []  # refused before connecting

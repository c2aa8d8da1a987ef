"""TLS 1.3 for the ferry transport, against real peers: openssl s_client and x509, a CA
made here, pinned and known fingerprints, a relay that the channel binding defeats."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import select
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sockferry.addresses import HostPort
from sockferry.cli.runtime import ExitCode
from sockferry.errors import AuthenticationFailed, PeerRefused
from sockferry.ferry import messages as m
from sockferry.ferry.client import FerryClient
from sockferry.ferry.copy_get import get_paths
from sockferry.ferry.copy_send import send_paths
from sockferry.ferry.secure import ClientTLS
from sockferry.tls import (
    ServerTLS,
    end_point_binding,
    fingerprint,
    first_certificate,
    format_fingerprint,
    make_self_signed,
    parse_fingerprint,
    server_tls,
)
from tests.conftest import require_program
from tests.ferry.harness import TOKEN, ServerThread, run, run_cli, spawn_cli

NO_BINDING = m.ALL_FEATURES & ~m.Feature.CHANNEL_BINDING


def self_signed(directory: Path, name: str = "server") -> tuple[Path, Path, ServerTLS]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    make_self_signed(cert, key, ["127.0.0.1", "localhost"])
    return cert, key, server_tls(str(cert), str(key))


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    paths = directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"
    directory.mkdir(parents=True, exist_ok=True)
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def ls(port: int, token: Path, *options: str) -> tuple[int, str, str]:
    return run_cli("ls", "-P", str(port), "--token-file", str(token), *options, "127.0.0.1:")


def said(err: str) -> list[str]:
    """What the command told its user (the in-process server logs to the same stream)."""
    return [line for line in err.splitlines() if line.startswith("sockferry:")]


# ---- a real TLS peer ------------------------------------------------------------------


def test_openssl_s_client_negotiates_tls13_and_tls12_is_refused(tmp_path: Path) -> None:
    openssl = require_program("openssl")
    _cert, _key, tls = self_signed(tmp_path / "tls")
    with ServerThread(tmp_path, tls=tls) as server:
        ok = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{server.port}",
                             "-brief"], input=b"", capture_output=True, timeout=30,
                            check=False)
        old = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{server.port}",
                              "-tls1_2", "-brief"], input=b"", capture_output=True,
                             timeout=30, check=False)
    text = (ok.stdout + ok.stderr).decode()
    assert "Protocol version: TLSv1.3" in text, text
    old_text = (old.stdout + old.stderr).decode()
    assert old.returncode != 0
    assert "Protocol version" not in old_text
    assert re.search(r"alert protocol version|no protocols available|handshake failure",
                     old_text), old_text
    assert any("TLS handshake failed" in line for line in server.logs), server.logs


def test_fingerprint_from_openssl_x509_in_both_forms(tmp_path: Path, env: dict[str, Path],
                                                     ) -> None:
    openssl = require_program("openssl")
    cert, _key, tls = self_signed(tmp_path / "tls")
    printed = subprocess.run([openssl, "x509", "-in", str(cert), "-noout", "-fingerprint",
                              "-sha256"], capture_output=True, text=True, timeout=30,
                             check=True).stdout.strip()
    assert parse_fingerprint(printed) == tls.fingerprint
    (env["root"] / "f.txt").write_text("x")
    with ServerThread(env["root"], tls=tls) as server:
        for form in (printed, printed.split("=", 1)[1], format_fingerprint(tls.fingerprint)):
            code, out, err = ls(server.port, env["token"], "--fingerprint", form)
            assert code == ExitCode.OK, err
            assert out.rstrip().endswith(" f.txt")
        wrong = format_fingerprint(bytes(32))
        code, _out, err = ls(server.port, env["token"], "--fingerprint", wrong)
    assert code == ExitCode.AUTH
    assert f"not the pinned {wrong} — refusing it" in err
    code, _out, err = run_cli("ls", "--fingerprint", "AB:CD", "--token-file",
                              str(env["token"]), "127.0.0.1:")
    assert code == ExitCode.USAGE and "is not a SHA-256 fingerprint" in err


def test_certificate_of_a_throwaway_ca(tmp_path: Path, env: dict[str, Path]) -> None:
    ca, leaf, key = make_ca(tmp_path / "ca")
    other_ca, _leaf, _key = make_ca(tmp_path / "other")
    source = env["src"] / "a.bin"
    source.write_bytes(os.urandom(300_000))
    with ServerThread(env["root"], tls=server_tls(str(leaf), str(key))) as server:
        code, _out, err = run_cli("send", "-P", str(server.port), "--token-file",
                                  str(env["token"]), "--ca", str(ca), str(source), "127.0.0.1:")
        assert code == ExitCode.OK, err
        code, _out, err = ls(server.port, env["token"], "--ca", str(other_ca))
        assert code == ExitCode.AUTH
        assert f"the TLS certificate of 127.0.0.1:{server.port} is not trusted" in err
    assert (env["root"] / "a.bin").read_bytes() == source.read_bytes()


def test_binding_follows_the_signature_hash(tmp_path: Path) -> None:
    """RFC 5929 §4.1: a SHA-384-signed certificate binds with SHA-384."""
    import hashlib  # noqa: PLC0415

    _ca, leaf, _key = make_ca(tmp_path / "ca")
    der = first_certificate(str(leaf))
    assert end_point_binding(der) == b"tls-server-end-point:" + hashlib.sha384(der).digest()
    cert, _key2, _tls = self_signed(tmp_path / "tls")
    der = first_certificate(str(cert))
    assert end_point_binding(der) == b"tls-server-end-point:" + hashlib.sha256(der).digest()


# ---- trust on first use ----------------------------------------------------------------


def test_trust_on_first_use_then_a_changed_certificate_is_refused(
        tmp_path: Path, env: dict[str, Path]) -> None:
    known = tmp_path / "known_hosts"
    _c, _k, first = self_signed(tmp_path / "one", "first")
    _c, _k, second = self_signed(tmp_path / "two", "second")
    with ServerThread(env["root"], tls=first) as server:
        port = server.port
        code, _out, err = ls(port, env["token"], "--tls", "--known-hosts", str(known))
        assert code == ExitCode.OK, err
        assert known.read_text() == f"127.0.0.1:{port} {format_fingerprint(first.fingerprint)}\n"
        assert ls(port, env["token"], "--tls", "--known-hosts", str(known))[0] == ExitCode.OK
    with ServerThread(env["root"], (HostPort("127.0.0.1", port),), tls=second):
        code, _out, err = ls(port, env["token"], "--tls", "--known-hosts", str(known))
        assert code == ExitCode.AUTH
        assert f"the TLS certificate of 127.0.0.1:{port} has CHANGED" in err
        assert f"sockferry known-hosts forget 127.0.0.1:{port}" in err
        assert run_cli("known-hosts", "list", "--known-hosts", str(known))[1] == \
            f"127.0.0.1:{port} {format_fingerprint(first.fingerprint)}\n"
        code, _out, err = run_cli("known-hosts", "forget", "127.0.0.1", "--known-hosts",
                                  str(known))
        assert code == ExitCode.OK and f"forgot 127.0.0.1:{port}" in err
        assert ls(port, env["token"], "--tls", "--known-hosts", str(known))[0] == ExitCode.OK
    assert known.read_text() == f"127.0.0.1:{port} {format_fingerprint(second.fingerprint)}\n"


def test_first_use_is_not_remembered_when_the_server_lacks_the_token(
        tmp_path: Path, env: dict[str, Path]) -> None:
    known = tmp_path / "known_hosts"
    _c, _k, tls = self_signed(tmp_path / "tls")
    with ServerThread(env["root"], tls=tls,
                      token=b"iMpOsToR-Wq8Zk3Vn6Rt1Yb9Lm4Xs7Pd2Gf5Hj0Ca") as server:
        code, _out, err = ls(server.port, env["token"], "--tls", "--known-hosts", str(known))
    assert code == ExitCode.AUTH and "authentication failed" in err
    assert not known.exists()


# ---- the channel binding ---------------------------------------------------------------


class Relay:
    """A man in the middle with its own certificate: TLS from the client, TLS to the
    server, bytes copied both ways."""

    def __init__(self, server_port: int, tls: ServerTLS) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.server_port = server_port
        self.tls = tls
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Relay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.thread.join(10)
        for thread in self.threads:
            thread.join(10)
        for sock in self.sockets:
            sock.close()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        outer = self.tls.context.wrap_socket(conn, server_side=True)
        upstream = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        upstream.check_hostname = False
        upstream.verify_mode = ssl.CERT_NONE
        inner = upstream.wrap_socket(socket.create_connection(("127.0.0.1",
                                                               self.server_port)))
        self.sockets += [outer, inner]
        # one thread for both directions: an SSL object must not be read in one thread
        # while it is written in another (two pumps made this test flaky under load)
        thread = threading.Thread(target=self._pump, args=(outer, inner), daemon=True)
        thread.start()
        self.threads.append(thread)

    @staticmethod
    def _pump(outer: ssl.SSLSocket, inner: ssl.SSLSocket) -> None:
        peer = {outer: inner, inner: outer}
        for sock in peer:
            sock.setblocking(False)
        try:
            while True:
                ready = [sock for sock in peer if sock.pending()] \
                    or select.select(list(peer), [], [], 10)[0]
                if not ready:
                    return  # silent for 10 s: the test is over
                for sock in ready:
                    try:
                        data = sock.recv(65536)
                    except ssl.SSLWantReadError:
                        continue  # a record not whole yet, or no application data in it
                    if not data:
                        return
                    peer[sock].settimeout(10)  # blocking, for the whole of sendall
                    peer[sock].sendall(data)
                    peer[sock].setblocking(False)
        except OSError:
            pass
        finally:
            for sock in peer:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


@pytest.mark.parametrize("features", [m.ALL_FEATURES, NO_BINDING],
                         ids=["bound", "unbound"])
def test_a_relayed_proof_is_refused_thanks_to_the_binding(tmp_path: Path,
                                                          features: int) -> None:
    """The client trusts the relay's certificate (as after a mistaken first use); with
    the binding the server's proof covers the server's certificate, not the relay's, so
    the client refuses it and never sends its own.  Without the binding (both sides
    configured as without the feature) the same relay gets through: the test can fail."""
    _c, _k, server_side = self_signed(tmp_path / "server", "server")
    _c, _k, relay_side = self_signed(tmp_path / "relay", "relay")
    (tmp_path / "root").mkdir()
    with ServerThread(tmp_path / "root", tls=server_side, features=features) as server, \
            Relay(server.port, relay_side) as relay:

        async def go() -> list[object]:
            client = await FerryClient.connect(HostPort("127.0.0.1", relay.port), TOKEN,
                                               tls=ClientTLS(pin=relay_side.fingerprint),
                                               features=features)
            entries: list[object] = list(await client.list(""))
            await client.finish()
            return entries

        if features & m.Feature.CHANNEL_BINDING:
            with pytest.raises(AuthenticationFailed):
                run(go())
        else:
            assert run(go()) == []
        server.stop()
    summaries = [line for line in server.logs if " -> 127.0.0.1:" in line]
    assert len(summaries) == 1, server.logs
    if features & m.Feature.CHANNEL_BINDING:
        assert "authentication failed (the client hung up" in summaries[0]
    else:
        assert "authenticated (client sockferry/" in summaries[0]


def test_a_tls_client_that_does_not_bind_is_refused(tmp_path: Path) -> None:
    _c, _k, tls = self_signed(tmp_path / "tls")
    with ServerThread(tmp_path, tls=tls) as server:

        async def go() -> None:
            await FerryClient.connect(HostPort("127.0.0.1", server.port), TOKEN,
                                      tls=ClientTLS(pin=tls.fingerprint), features=NO_BINDING)

        with pytest.raises(Exception, match="binds authentication to the TLS channel"):
            run(go())


# ---- plaintext meets TLS ---------------------------------------------------------------


def test_plaintext_client_meets_tls_server(tmp_path: Path, env: dict[str, Path]) -> None:
    _c, _k, tls = self_signed(tmp_path / "tls")
    with ServerThread(env["root"], tls=tls) as server:
        code, _out, err = ls(server.port, env["token"])
        server.stop()
    assert code == ExitCode.REFUSED
    assert said(err) == [
        "sockferry: error: server closed the connection: this server accepts TLS only — "
        "connect with --tls (and --fingerprint, --ca, or trust on first use)"]
    assert any("refused a plaintext client: this server accepts TLS only" in line
               for line in server.logs), server.logs


def test_tls_client_meets_plaintext_server(tmp_path: Path, env: dict[str, Path]) -> None:
    with ServerThread(env["root"]) as server:
        code, _out, err = ls(server.port, env["token"], "--tls", "--known-hosts",
                             str(tmp_path / "kh"))
        server.stop()
    assert code == ExitCode.NETWORK
    assert said(err) == [
        f"sockferry: error: 127.0.0.1:{server.port} does not answer in TLS (it said: the "
        "client speaks TLS but this server runs without --tls) — connect without --tls, or "
        "restart the server with --tls"]
    assert any("the client speaks TLS but this server runs without --tls" in line
               for line in server.logs), server.logs


# ---- transfers -------------------------------------------------------------------------


def test_send_get_ls_over_tls(tmp_path: Path, env: dict[str, Path]) -> None:
    """Bodies large enough for the bulk paths (which must not sendfile or splice
    under TLS), small files gathered, a sparse file, and back again."""
    _c, _k, tls = self_signed(tmp_path / "tls")
    big = env["src"] / "big.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024 + 5))
    sparse = env["src"] / "sparse.bin"
    with open(sparse, "wb") as f:
        f.write(b"head")
        f.seek(40 * 1024 * 1024)
        f.write(b"tail")
    tree = env["src"] / "tree"
    for i in range(200):
        (tree / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 4}" / f"f{i}").write_bytes(os.urandom(i * 37))
    pin = format_fingerprint(tls.fingerprint)
    with ServerThread(env["root"], tls=tls) as server:
        common = ("-P", str(server.port), "--token-file", str(env["token"]),
                  "--fingerprint", pin)
        code, _out, err = run_cli("send", "-r", *common, str(big), str(sparse), str(tree),
                                  "127.0.0.1:")
        assert code == ExitCode.OK, err
        code, out, err = run_cli("ls", "-R", *common, "127.0.0.1:")
        assert code == ExitCode.OK, err
        assert len(out.splitlines()) == 2 + 1 + 4 + 200
        code, _out, err = run_cli("get", "-r", *common, "127.0.0.1:big.bin",
                                  "127.0.0.1:sparse.bin", "127.0.0.1:tree", str(env["back"]))
        assert code == ExitCode.OK, err
        server.stop()
    for name in ("big.bin", "sparse.bin"):
        assert (env["back"] / name).read_bytes() == (env["src"] / name).read_bytes()
        assert (env["root"] / name).read_bytes() == (env["src"] / name).read_bytes()
    for i in range(200):
        rel = Path("tree") / f"d{i % 4}" / f"f{i}"
        assert (env["back"] / rel).read_bytes() == (env["src"] / rel).read_bytes()
    assert any("20.0 MiB" in line and "PUT 'big.bin'" in line for line in server.logs)


def test_library_api_over_tls(tmp_path: Path, env: dict[str, Path]) -> None:
    _c, _k, tls = self_signed(tmp_path / "tls")
    source = env["src"] / "one.bin"
    source.write_bytes(os.urandom(9 * 1024 * 1024))
    with ServerThread(env["root"], tls=tls) as server:

        async def go() -> None:
            address = HostPort("127.0.0.1", server.port)
            trust = ClientTLS(pin=tls.fingerprint)
            client = await FerryClient.connect(address, TOKEN, tls=trust)
            assert client.session.features & m.Feature.CHANNEL_BINDING
            assert [o.error for o in await send_paths(client, [str(source)], "",
                                                      recursive=False, keep_mtime=True)] \
                == [None]
            client = await FerryClient.connect(address, TOKEN, tls=trust)
            assert [o.error for o in await get_paths(client, ["one.bin"], str(env["back"]),
                                                     recursive=False, keep_mtime=True)] \
                == [None]

        run(go())
    assert (env["back"] / "one.bin").read_bytes() == source.read_bytes()


# ---- serve --tls on the command line ----------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    config = tmp_path / "config"
    root = tmp_path / "served"
    root.mkdir()
    env = {**os.environ, "XDG_CONFIG_HOME": str(config)}
    env.pop("SOCKFERRY_TOKEN", None)
    proc = spawn_cli("serve", str(root), "--listen", "127.0.0.1:0", "--tls", env=env)
    lines: list[str] = []
    port = 0
    assert proc.stderr is not None
    try:
        for _ in range(50):
            line = proc.stderr.readline().decode()
            if not line:
                break
            lines.append(line)
            if found := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = int(found.group(1))
                break
        assert port, lines
        yield port, config / "sockferry", lines
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_serve_tls_makes_its_certificate_beside_the_token(
        tls_server: tuple[int, Path, list[str]]) -> None:
    port, config, lines = tls_server
    cert, key = config / "tls-cert.pem", config / "tls-key.pem"
    assert (key.stat().st_mode & 0o777) == 0o600
    printed = format_fingerprint(fingerprint(first_certificate(str(cert))))
    assert any(f"SHA-256 fingerprint {printed} (" in line for line in lines), lines
    assert any(f"created a self-signed TLS certificate {cert}" in line for line in lines)
    code, _out, err = run_cli("ls", "-P", str(port), "--token-file", str(config / "token"),
                              "--fingerprint", printed, "127.0.0.1:")
    assert code == ExitCode.OK, err


def test_a_client_from_before_tls_still_works_with_a_plaintext_server(
        env: dict[str, Path]) -> None:
    """A version-1 client that has never heard of CHANNEL_BINDING, over real sockets."""
    (env["root"] / "old.txt").write_text("x")
    with ServerThread(env["root"]) as server:

        async def go() -> list[str]:
            client = await FerryClient.connect(HostPort("127.0.0.1", server.port), TOKEN,
                                               features=NO_BINDING)
            names = [e.path for e in await client.list("")]
            await client.finish()
            return names

        assert run(go()) == ["old.txt"]


def test_a_busy_tls_server_is_reported_as_busy(tmp_path: Path, env: dict[str, Path]) -> None:
    """Busy before authentication: the library reports it with the server's sentence;
    the command line waits and gets in once the slot is free (the idle holder is dropped
    at the handshake deadline)."""
    _c, _k, tls = self_signed(tmp_path / "tls")
    with ServerThread(env["root"], tls=tls, max_connections=1,
                      handshake_timeout_s=1.0) as server, \
            socket.create_connection(("127.0.0.1", server.port)):
        for _ in range(100):  # bounded: until the idle connection is being served
            if server.connection_count() == 1:
                break
            threading.Event().wait(0.02)
        assert server.connection_count() == 1

        async def once() -> None:
            await FerryClient.connect(HostPort("127.0.0.1", server.port), TOKEN,
                                      tls=ClientTLS(pin=tls.fingerprint), busy_retry_s=0)

        with pytest.raises(PeerRefused, match="server busy: 1 connections already"):
            run(once())
        code, _out, err = ls(server.port, env["token"], "--fingerprint",
                             format_fingerprint(tls.fingerprint))
    assert code == ExitCode.OK, err


def test_resume_over_tls(tmp_path: Path, env: dict[str, Path]) -> None:
    """send --resume and get --resume take the same TLS options (PARTIAL, PUT, GET)."""
    _c, _k, tls = self_signed(tmp_path / "tls")
    source = env["src"] / "r.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024))
    pin = ("--fingerprint", format_fingerprint(tls.fingerprint))
    with ServerThread(env["root"], tls=tls) as server:
        common = ("-P", str(server.port), "--token-file", str(env["token"]), *pin)
        code, _out, err = run_cli("send", "--resume", *common, str(source), "127.0.0.1:")
        assert code == ExitCode.OK, err
        code, _out, err = run_cli("get", "--resume", *common, "127.0.0.1:r.bin",
                                  str(env["back"]))
        assert code == ExitCode.OK, err
    assert (env["back"] / "r.bin").read_bytes() == source.read_bytes()


def test_unusable_certificate_or_key_is_one_sentence(tmp_path: Path, env: dict[str, Path],
                                                     ) -> None:
    cert, key, _tls = self_signed(tmp_path / "one")
    other_cert, _other_key, _other = self_signed(tmp_path / "two")
    serve = ("serve", str(env["root"]), "--listen", "127.0.0.1:0", "--token-file",
             str(env["token"]))
    code, _out, err = run_cli(*serve, "--cert", str(other_cert), "--key", str(env["token"]))
    assert code == ExitCode.USAGE
    assert "are not a PEM certificate and its private key — check --cert and --key" in err
    key.chmod(0o640)
    code, _out, err = run_cli(*serve, "--cert", str(cert), "--key", str(key))
    assert code == ExitCode.USAGE and f"run: chmod 600 {key}" in err
    code, _out, err = run_cli(*serve, "--cert", str(cert))
    assert code == ExitCode.USAGE and "--cert and --key go together" in err

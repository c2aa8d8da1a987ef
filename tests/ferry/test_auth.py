"""ferry/auth.py directly: the proofs are bound to the token, the role, the whole
transcript and (when agreed) the TLS channel."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from sockferry.ferry import auth

TOKEN = b"k9V2mXq7Lr0tZ4wB8nYc1pH6sJ3dF5gA"


@given(st.binary(max_size=80), st.binary(max_size=80), st.binary(min_size=1, max_size=40))
def test_a_proof_depends_on_every_input(hello: bytes, reply: bytes, binding: bytes) -> None:
    base = auth.transcript_hash(hello, reply)
    server = auth.proof(TOKEN, auth.SERVER_LABEL, base)
    assert len(server) == 32
    assert auth.verify(server, auth.proof(TOKEN, auth.SERVER_LABEL, base))
    others = [
        auth.proof(TOKEN, auth.CLIENT_LABEL, base),  # the other role: no reflection
        auth.proof(TOKEN + b"x", auth.SERVER_LABEL, base),  # another token
        auth.proof(TOKEN, auth.SERVER_LABEL, auth.transcript_hash(hello, reply, binding)),
        auth.proof(TOKEN, auth.SERVER_LABEL, auth.transcript_hash(hello + b"\0", reply)),
        auth.proof(TOKEN, auth.SERVER_LABEL, auth.transcript_hash(hello, reply + b"\0")),
    ]
    assert not any(auth.verify(server, other) for other in others)


def test_the_transcript_frames_its_parts() -> None:
    """Lengths go before the parts, so moving bytes from one HELLO to the other (or into
    the binding) changes the hash."""
    assert auth.transcript_hash(b"ab", b"c") != auth.transcript_hash(b"a", b"bc")
    assert auth.transcript_hash(b"a", b"b", b"c") != auth.transcript_hash(b"a", b"bc")
    expected = hashlib.sha256(b"\0\0\0\x02ab\0\0\0\x01c").digest()
    assert auth.transcript_hash(b"ab", b"c") == expected


def test_proof_is_hmac_sha256_over_label_and_transcript() -> None:
    """As docs/protocol.md §3 specifies it, so other implementations can be written."""
    transcript = auth.transcript_hash(b"hello", b"reply")
    assert auth.proof(TOKEN, auth.CLIENT_LABEL, transcript) == hmac.new(
        TOKEN, b"sockferry v1 client proof" + transcript, hashlib.sha256).digest()
    assert not auth.verify(b"\0" * 32, b"\0" * 31)

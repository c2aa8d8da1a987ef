"""Mutual challenge-response authentication with a shared token (pure).

Both sides send a fresh 32-byte nonce.  The server proves it knows the token first, in
HELLO_REPLY; the client checks that proof before it reveals its own, in AUTH.  Each
proof is HMAC-SHA256 keyed by the token over a label and a hash of the handshake
transcript (both HELLO bodies, so both nonces and the negotiated features), so proofs
cannot be replayed, reflected from one role to the other, or kept across a downgrade.
The token itself never crosses the wire.  Over TLS with CHANNEL_BINDING agreed, the
transcript also covers the channel binding (the server certificate's tls-server-end-point
value, docs/protocol.md §3.1), so a proof made on one TLS connection is worthless on any
other whose server presented another certificate: a relay fails.
"""

from __future__ import annotations

import hashlib
import hmac

SERVER_LABEL = b"sockferry v1 server proof"
CLIENT_LABEL = b"sockferry v1 client proof"


def transcript_hash(hello_body: bytes, reply_signed_part: bytes,
                    binding: bytes | None = None) -> bytes:
    """SHA-256 over both HELLO bodies (and the channel binding, when agreed), each
    preceded by its 32-bit length."""
    digest = hashlib.sha256()
    parts = (hello_body, reply_signed_part) if binding is None else (
        hello_body, reply_signed_part, binding)
    for part in parts:
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest()


def proof(token: bytes, label: bytes, transcript: bytes) -> bytes:
    return hmac.new(token, label + transcript, hashlib.sha256).digest()


def verify(expected: bytes, received: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(expected, received)

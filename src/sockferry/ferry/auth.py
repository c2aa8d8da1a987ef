"""Mutual challenge-response authentication with a shared token (pure).

Both sides send a fresh 32-byte nonce.  The server proves it knows the token first, in
HELLO_REPLY; the client checks that proof before it reveals its own, in AUTH.  Each
proof is HMAC-SHA256 keyed by the token over a label and a hash of the handshake
transcript (both HELLO bodies, so both nonces and the negotiated features), so proofs
cannot be replayed, reflected from one role to the other, or kept across a downgrade.
The token itself never crosses the wire.
"""

from __future__ import annotations

import hashlib
import hmac

SERVER_LABEL = b"sockferry v1 server proof"
CLIENT_LABEL = b"sockferry v1 client proof"


def transcript_hash(hello_body: bytes, reply_signed_part: bytes) -> bytes:
    """SHA-256 over both HELLO bodies, each preceded by its 32-bit length."""
    digest = hashlib.sha256()
    for part in (hello_body, reply_signed_part):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest()


def proof(token: bytes, label: bytes, transcript: bytes) -> bytes:
    return hmac.new(token, label + transcript, hashlib.sha256).digest()


def verify(expected: bytes, received: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(expected, received)

"""Our side of the four-way handshake, from INIT to COOKIE ACK (pure).

RFC 9260 §5.1 A–E: the INIT we send and resend under T1-init, the peer's INIT ACK judged
(a cookie, no zero tag or stream count, parameters by the rules of their upper two bits,
§3.2.1), the COOKIE ECHO we resend, and §5.2.6: a stale cookie asked for again with a
Cookie Preservative.  The association keeps the states and the T1 deadline; this keeps
what is sent and how often it has been.
"""

from __future__ import annotations

import struct

from sockferry.sctp import chunks as c
from sockferry.sctp.config import Config

_U16_PAIR = struct.Struct("!HH")

# Parameters of INIT and INIT ACK this stack understands (the rest follow §3.2.1).
KNOWN_PARAMS = frozenset({c.ParamType.IPV4_ADDRESS, c.ParamType.IPV6_ADDRESS,
                          c.ParamType.STATE_COOKIE, c.ParamType.UNRECOGNIZED_PARAMETER,
                          c.ParamType.COOKIE_PRESERVATIVE,
                          c.ParamType.SUPPORTED_ADDRESS_TYPES, c.ParamType.HEARTBEAT_INFO})


class Initiation:
    """The INIT and COOKIE ECHO we send, how often we have, and when the last COOKIE
    ECHO left (the handshake's round trip is an RTT sample if it was sent once)."""

    __slots__ = ("_config", "_initial_tsn", "_tag", "cookie_echo", "cookie_sent_at",
                 "init_chunk", "retransmits")

    def __init__(self, config: Config) -> None:
        self._config = config
        self._tag = 0
        self._initial_tsn = 0
        self.init_chunk = b""
        self.cookie_echo = b""
        self.cookie_sent_at = 0.0
        self.retransmits = 0

    def begin(self, my_tag: int, my_initial_tsn: int) -> None:
        """§5.1 A: the INIT for a new association."""
        self._tag = my_tag
        self._initial_tsn = my_initial_tsn
        self.init_chunk = self._encode_init(())
        self.retransmits = 0

    def _encode_init(self, extra: tuple[c.Param, ...]) -> bytes:
        config = self._config
        params = (c.Param(c.ParamType.SUPPORTED_ADDRESS_TYPES,
                          _U16_PAIR.pack(c.ParamType.IPV4_ADDRESS, c.ParamType.IPV6_ADDRESS)),
                  *extra)
        return c.encode_chunk(c.InitChunk(self._tag, config.receive_buffer,
                                          config.streams.outbound, config.streams.max_inbound,
                                          self._initial_tsn, params))

    def retry(self) -> bool:
        """One more INIT or COOKIE ECHO; False once Max.Init.Retransmits are spent."""
        self.retransmits += 1
        return self.retransmits <= self._config.max_init_retransmits

    def accept_init_ack(self, chunk: c.InitAckChunk) -> c.Violation | list[bytes]:
        """§5.1 C: the COOKIE ECHO to send (kept in ``cookie_echo``) and the chunks to
        bundle after it (an ERROR reporting unrecognized parameters), or why not."""
        cookie, problems, unrecognized = inspect_init_ack_params(chunk.params)
        if chunk.initiate_tag == 0 or chunk.outbound_streams == 0 or chunk.inbound_streams == 0:
            return c.Violation(c.Cause(c.CauseCode.INVALID_MANDATORY_PARAMETER),
                               "the peer's INIT ACK has a zero tag or stream count")
        if cookie is None:
            body = struct.pack("!IH", 1, c.ParamType.STATE_COOKIE)
            return c.Violation(c.Cause(c.CauseCode.MISSING_MANDATORY_PARAMETER, body),
                               "the peer's INIT ACK has no state cookie")
        if problems:
            return c.Violation(problems[0], "the peer's INIT ACK is not acceptable")
        self.cookie_echo = c.encode_chunk(c.CookieEchoChunk(cookie))
        self.retransmits = 0
        if not unrecognized:
            return []
        return [c.encode_chunk(c.ErrorChunk((c.Cause(c.CauseCode.UNRECOGNIZED_PARAMETERS,
                                                     unrecognized),)))]

    def rtt_sample(self, now: float) -> float | None:
        """The COOKIE ECHO's round trip, unless it was resent (Karn's rule)."""
        return now - self.cookie_sent_at if self.retransmits == 0 else None

    def preserve_cookie(self, stale: c.Cause) -> None:
        """§5.2.6: the next INIT asks for twice the staleness the peer reported."""
        body = stale.body
        staleness_us = struct.unpack("!I", body[:4])[0] if len(body) >= 4 else 0
        extra_ms = min(2 * staleness_us // 1000 + 1, 0xFFFFFFFF)
        self.init_chunk = self._encode_init((c.Param(c.ParamType.COOKIE_PRESERVATIVE,
                                                     struct.pack("!I", extra_ms)),))


def inspect_init_ack_params(params: tuple[c.Param, ...],
                            ) -> tuple[bytes | None, list[c.Cause], bytes]:
    """INIT ACK parameters: the cookie, fatal problems, and unrecognized ones to report."""
    cookie = None
    problems: list[c.Cause] = []
    unrecognized = b""
    for param in params:
        if param.type == c.ParamType.STATE_COOKIE:
            cookie = param.value
        elif param.type == c.ParamType.HOST_NAME_ADDRESS:
            problems.append(c.Cause(c.CauseCode.UNRESOLVABLE_ADDRESS, c.encode_param(param)))
        elif param.type in KNOWN_PARAMS:
            continue
        else:
            if param.type & 0x4000:
                unrecognized += c.encode_param(param)
            if not param.type & 0x8000:
                break  # §3.2.1: stop processing this chunk's parameters
    return cookie, problems, unrecognized

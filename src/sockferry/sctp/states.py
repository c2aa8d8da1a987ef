"""The states of one association (RFC 9260 §4) and the sets of them its parts test (pure).

They live apart from ``association.py`` so that the parts it is composed of
(``handshake.py``, ``shutdown.py``) can name the states without importing it.
"""

from __future__ import annotations

from enum import Enum


class AssociationState(Enum):
    """RFC 9260 §4."""

    CLOSED = "CLOSED"
    COOKIE_WAIT = "COOKIE-WAIT"
    COOKIE_ECHOED = "COOKIE-ECHOED"
    ESTABLISHED = "ESTABLISHED"
    SHUTDOWN_PENDING = "SHUTDOWN-PENDING"
    SHUTDOWN_SENT = "SHUTDOWN-SENT"
    SHUTDOWN_RECEIVED = "SHUTDOWN-RECEIVED"
    SHUTDOWN_ACK_SENT = "SHUTDOWN-ACK-SENT"


S = AssociationState
SETUP_STATES = frozenset({S.COOKIE_WAIT, S.COOKIE_ECHOED})
SENDING_STATES = frozenset({S.COOKIE_WAIT, S.COOKIE_ECHOED, S.ESTABLISHED})
# DATA is accepted and SACKs exchanged (§6)
DATA_STATES = frozenset({S.ESTABLISHED, S.SHUTDOWN_PENDING, S.SHUTDOWN_SENT,
                         S.SHUTDOWN_RECEIVED})
# new DATA may still go out (§9.2: not after our SHUTDOWN)
NEW_DATA_STATES = frozenset({S.ESTABLISHED, S.SHUTDOWN_PENDING, S.SHUTDOWN_RECEIVED})
OPEN_STATES = frozenset(S) - {S.CLOSED}

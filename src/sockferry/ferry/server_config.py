"""What ``serve`` is told: the ferry server's settings, in a module of their own so the
connection's parts can name them without importing the server that runs them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sockferry.access import AccessRules
from sockferry.admission import Startups
from sockferry.ferry import messages as m
from sockferry.ferry.limits import DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_LIST_ENTRIES
from sockferry.ferry.session import DEFAULT_MAX_REQUESTS
from sockferry.metrics import OFF, Metrics
from sockferry.storage.durability import Durability
from sockferry.storage.names import DEFAULT_UMASK

if TYPE_CHECKING:
    from sockferry.tls import ServerTLS

DEFAULT_STARTUPS = Startups(10, 30, 100)  # sshd's MaxStartups default


@dataclass(frozen=True, slots=True)
class FerryServerConfig:
    token: bytes
    umask: int = DEFAULT_UMASK
    clobber: bool = True
    max_connections: int = 256
    max_requests: int = DEFAULT_MAX_REQUESTS
    idle_timeout_s: float = 120.0
    # Limits of one connection and of the root (ferry/limits.py); 0: no limit.
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_bytes_per_connection: int = 0
    max_files_per_connection: int = 0
    max_list_entries: int = DEFAULT_MAX_LIST_ENTRIES
    quota: int = 0
    backlog: int = 128
    durability: Durability = Durability.BATCH
    # Resume (docs/protocol.md §5.1): how long and how much partial files are kept.
    partial_keep_s: float = 24 * 3600.0
    partial_max_bytes: int = 16 * 1024**3
    partial_sweep_s: float = 600.0
    features: int = m.ALL_FEATURES  # fewer to behave as an older server would
    mptcp: bool = False  # listen with Multipath TCP (still accepts plain TCP clients)
    # Before authentication (sshd's MaxStartups, PerSourceMaxStartups, LoginGraceTime).
    max_startups: Startups = DEFAULT_STARTUPS
    max_startups_per_source: int = 4
    handshake_timeout_s: float = 5.0  # the TLS handshake, then the token proofs: each
    access: AccessRules = field(default_factory=AccessRules)  # --allow/--deny (not AF_UNIX)
    read_only: bool = False  # refuse every request that writes (READ_ONLY)
    tls: ServerTLS | None = None  # accept TLS 1.3 clients only (ferry/secure.py)
    metrics: Metrics = OFF  # --metrics: what the server counts (metrics.py)
    log_transfers: bool = False  # every transfer at info, successes too (JSON logs)

"""What a server connection needs of its server, and what its parts (``Uploads``,
``Commits``, ``Answers``) need of the connection that holds them and of each other.

``server.FerryServer`` and ``connection.Connection`` are named here as protocols so that
nothing imports the module that imports it (as ``client_base`` does for the client's
parts).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from sockferry.admission import StartupGate
from sockferry.ferry.limits import Budget, Quota
from sockferry.ferry.server_config import FerryServerConfig
from sockferry.ferry.server_session import ServerSession
from sockferry.ferry.upload_state import Verified
from sockferry.metrics import Metrics
from sockferry.storage.store import Store, StoreCache
from sockferry.streams import Stream


class ConnectionHost(Protocol):
    """What a connection needs of the server that accepted it (ferry/server.py
    ``FerryServer``): what all its connections share."""

    root: Store
    config: FerryServerConfig
    quota: Quota | None
    features: int  # the feature bits offered (config.features, less what the store lacks)
    gate: StartupGate  # MaxStartups: the connection leaves it once authenticated


class CommitsPart(Protocol):
    """What receiving asks of committing (ferry/durability.py ``Commits``)."""

    @property
    def seal_early(self) -> bool: ...

    def opened(self, request: int, key: str) -> None: ...

    def opened_verified(self, request: int, key: str, verified: Verified) -> None: ...

    def ended(self, request: int) -> None: ...

    def commit(self, verified: Verified) -> None: ...

    def leave(self) -> None: ...

    def spawn(self, work: Coroutine[Any, Any, None]) -> None: ...


class NameChangesPart(Protocol):
    """What receiving and committing ask of the answers (ferry/answers.py ``Answers``):
    DELETE and SYMLINK waiting for a PUT of their path to end."""

    def run_name_changes(self) -> None: ...


class ServerConnection(Protocol):
    config: FerryServerConfig
    session: ServerSession
    root: Store
    dirs: StoreCache
    stream: Stream
    metrics: Metrics
    budget: Budget
    quota: Quota | None  # the server's --quota, shared by its connections
    transport: str
    peer: str
    files: int  # committed or sent, for the connection's summary line
    wake: asyncio.Event  # the writer has something to send

    @property
    def commits(self) -> CommitsPart: ...

    @property
    def answers(self) -> NameChangesPart: ...

    def refuse(self, request: int, verb: str, path: str, code: int, message: str,
               started: float | None = None, nbytes: int = 0) -> None: ...

    def log_file(self, verb: str, path: str, nbytes: int, started: float | None,
                 result: str, level: int = logging.INFO, error: str | None = None) -> None: ...

    def within_budget(self, request: int, verb: str, path: str, size: int) -> bool: ...

    async def flush(self) -> None: ...

"""What a client's ``puts`` and ``gets`` need of the connection that holds them.

``client.FerryClient`` is that connection; it is named here as a protocol so that the
parts do not import the client that imports them.
"""

from __future__ import annotations

from typing import Protocol

from sockferry.ferry.client_session import ClientSession
from sockferry.ferry.inflight import InFlight
from sockferry.streams import Stream


class ClientConnection(Protocol):
    stream: Stream
    session: ClientSession
    umask: int
    inflight: InFlight

    @property
    def can_stream(self) -> bool: ...

    @property
    def can_resume(self) -> bool: ...

    async def send_queued(self) -> None: ...

    async def gathered(self) -> None: ...

    async def partial(self, path: str) -> tuple[int, bytes]: ...

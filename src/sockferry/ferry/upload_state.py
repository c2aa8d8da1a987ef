"""One upload as the server's parts hand it on: receiving (ferry/uploads.py) fills it,
committing (ferry/durability.py) makes it visible."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sockferry.ferry.bodies import Sink
from sockferry.ferry.limits import Reservation
from sockferry.records import record
from sockferry.storage.atomic import AtomicFile


@dataclass(slots=True)
class Upload:
    path: str
    file: AtomicFile
    sink: Sink | None  # hashes a body that arrives in pieces; None for PUT_INLINE
    size: int
    mode: int
    mtime_ns: int | None
    started: float = field(default_factory=time.monotonic)
    offset: int = 0  # resumed: the first bytes were kept from an earlier transfer
    reservation: Reservation | None = None  # room under --quota
    streamed: bool = False  # STREAM: ``size`` grows with the body, checked as it comes


@record  # one per file received: a frozen dataclass's __init__ costs several times more
class Verified:
    """An upload whose content matched the sender's digest, waiting to be committed."""

    request: int
    digest: bytes
    upload: Upload

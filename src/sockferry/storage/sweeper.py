"""Sweeping a store's temporaries while a server runs: the partial files of interrupted
uploads past their time or over their budget, and what a server that crashed left (a
local root's temporary files, an S3 store's multipart uploads).  One loop for the ferry
and the TFTP servers."""

from __future__ import annotations

import asyncio
import logging

from sockferry.storage.store import Store
from sockferry.units import format_bytes


async def sweep_forever(store: Store, keep_s: float, max_partial_bytes: int,
                        every_s: float, log: logging.Logger) -> None:
    """``store.sweep_temporaries`` now and every ``every_s``, in a worker thread (a
    large tree or a bucket takes a while), each removal logged; until cancelled."""
    while True:
        try:
            removed = await asyncio.to_thread(store.sweep_temporaries, keep_s,
                                              max_partial_bytes)
        except OSError as exc:
            log.warning("sweeping partial files failed: %s", exc.strerror or exc)
        else:
            for path, size in removed:
                log.info("removed partial file %s (%s): expired or over the budget",
                         path, format_bytes(size))
        await asyncio.sleep(every_s)

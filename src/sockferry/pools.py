"""Thread pools that a whole process shares, each made when it is first needed (a
command that never receives a large body or commits to a remote store starts no thread
for it)."""

from __future__ import annotations

import concurrent.futures

_pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}


def shared_pool(name: str, threads: int) -> concurrent.futures.ThreadPoolExecutor:
    """The process's pool ``name`` of ``threads`` threads (named sockferry-NAME)."""
    pool = _pools.get(name)
    if pool is None:
        pool = _pools[name] = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix=f"sockferry-{name}")
    return pool

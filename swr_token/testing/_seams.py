"""Seams for tests that must put a client in a state no public call holds for long."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .._client import TokenClient

__all__ = ["holding_client_lock"]


@contextlib.contextmanager
def holding_client_lock(client: TokenClient) -> Iterator[None]:
    """Hold ``client``'s cache lock for the block, as a thread caught mid-update would.

    For fork tests: a thread of the parent holding the lock when ``os.fork()`` runs must
    not deadlock the child (it gets a fresh lock). Never hold it while calling the client.
    """
    with client._cache.lock:
        yield

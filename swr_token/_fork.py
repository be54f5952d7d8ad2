"""One process-wide at-fork hook over a weak set of clients.

After ``os.fork()`` only the forking thread survives: locks held by the parent's other threads
stay locked forever and its workers are gone. Each live client rebuilds its locks and threads
in the child. A weak set, so registering for the hook never keeps a client alive.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Protocol

__all__ = ["register"]

_log = logging.getLogger("swr_token")


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_clients: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


def register(client: _ForkAware) -> None:
    _clients.add(client)


def _after_fork_in_child() -> None:
    for client in list(_clients):
        try:
            client._after_fork_in_child()
        except Exception:  # pragma: no cover - must never break the child
            _log.exception("resetting a client after fork failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

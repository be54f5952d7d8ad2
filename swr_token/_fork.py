"""One process-wide at-fork hook over a weak set of clients, and a pid watch for forks
that run no hook.

After ``os.fork()`` only the forking thread survives: locks held by the parent's other threads
stay locked forever and its workers are gone. Each live client rebuilds its locks and threads
in the child. A weak set, so registering for the hook never keeps a client alive.

A fork made from C (uWSGI's workers, unless ``--py-call-osafterfork``) runs no at-fork hook;
:class:`PidWatch` notices the new pid on the client's next slow-path call and resets then.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Protocol

__all__ = ["PidWatch", "register"]

_log = logging.getLogger("swr_token")


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_clients: weakref.WeakSet[_ForkAware] = weakref.WeakSet()

# How long a thread waits for another thread of the same child to finish the reset.
_RESET_WAIT = 5.0


class PidWatch:
    """The pid a client last ran in; :meth:`check` resets the client in a hookless fork.

    Checked off the fresh-token path only (a pid read is a system call's worth of time):
    a child that only reads fresh tokens needs no reset until one goes stale.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._resets: dict[int, threading.Event] = {}

    def check(self, client: _ForkAware) -> None:
        if os.getpid() != self.pid:
            self._reset(client)

    def ran_hook(self) -> None:
        """The at-fork hook reset the client: nothing left to notice."""
        self.pid = os.getpid()
        self._resets = {}

    def _reset(self, client: _ForkAware) -> None:
        pid = os.getpid()
        done = threading.Event()
        # setdefault is atomic under the GIL: exactly one thread of this child resets;
        # the others wait for it instead of touching the parent's locks meanwhile.
        first = self._resets.setdefault(pid, done)
        if first is not done:
            first.wait(_RESET_WAIT)
            return
        try:
            _log.info("running in a forked process that ran no at-fork hook "
                      "(pid %d); resetting the client as after os.fork()", pid)
            client._after_fork_in_child()
        except Exception:  # pragma: no cover - must never break the child
            _log.exception("resetting a client after fork failed")
        finally:
            self.pid = pid
            done.set()


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

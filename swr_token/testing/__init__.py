"""Test helpers: a fake clock, an inline executor, and a real local token issuer.

Loaded on first use, name by name: the pytest plugin (installed with the package, so it
loads in every pytest run) imports this package, and the issuer's key generation, JWT and
HTTP stack must not cost a run that never asks for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .._clock import FakeClock
    from .._executor import InlineExecutor
    from .._issuer import LocalIssuer, RecordedRequest
    from ._seams import holding_client_lock

__all__ = ["FakeClock", "InlineExecutor", "LocalIssuer", "RecordedRequest",
           "holding_client_lock"]

# Public name -> the module defining it.
_LAZY = {
    "FakeClock": "swr_token._clock",
    "InlineExecutor": "swr_token._executor",
    "LocalIssuer": "swr_token._issuer",
    "RecordedRequest": "swr_token._issuer",
    "holding_client_lock": "swr_token.testing._seams",
}


__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)
del TYPE_CHECKING, lazy_attributes  # not part of the public surface

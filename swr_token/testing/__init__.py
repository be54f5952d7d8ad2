"""Test helpers: a fake clock, an inline executor, and a real local token issuer."""

from .._clock import FakeClock
from .._executor import InlineExecutor
from .._issuer import LocalIssuer, RecordedRequest
from ._seams import holding_client_lock

__all__ = ["FakeClock", "InlineExecutor", "LocalIssuer", "RecordedRequest",
           "holding_client_lock"]

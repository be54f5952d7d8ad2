"""Test helpers: a fake clock, an inline executor, and a real local token issuer."""

from .._clock import FakeClock
from .._executor import InlineExecutor

__all__ = ["FakeClock", "InlineExecutor"]

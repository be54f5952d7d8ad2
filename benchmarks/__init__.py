"""Benchmarks: run by hand, print tables; not part of the test suite."""

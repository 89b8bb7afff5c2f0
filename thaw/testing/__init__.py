"""Helpers for tests, demos and benchmarks: tiny models built locally, engine worker processes."""

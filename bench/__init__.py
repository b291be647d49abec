"""Benchmarks for Ki2API. Each module runs on its own: ``python -m bench.<name>``."""

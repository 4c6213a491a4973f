"""Benchmarks for mqcore: ``python -m benchmarks.run`` and ``benchmarks/core_bench.py``."""

"""Benchmarks: suite runner and speed measurements; they write into `results/`."""

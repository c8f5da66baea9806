"""Benchmarks: ``python -m bench`` (harness.py, overload.py, gpu_check.py) and timing scripts."""

"""Benchmarks: ``python -m bench`` (harness.py) and the stand-alone timing scripts beside it."""

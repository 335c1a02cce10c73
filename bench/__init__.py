"""Benchmarks: each module has a ``main(argv)`` that prints its figures and the ratio to its baseline."""

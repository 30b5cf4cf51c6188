"""``biomed bench``: runtime, service efficiency, adaptive batching, preprocessing, ISM and start-up benchmarks.

See docs/benchmarks.md for what each case measures and how to read the figures.
"""

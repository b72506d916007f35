"""Benchmarks of vm-isolation on this host: `make bench` or `python -m bench --help`.

One module per figure (floor, coldpath, concurrency, disk, discovery, kill, footprint), the
statistics in :mod:`bench.stats`, the output files in :mod:`bench.report`.
"""

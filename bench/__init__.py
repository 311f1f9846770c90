"""Benchmarks of qoder-exporter: scrape speed, API cost, poll time, memory and CPU.

Run them all with `bench/run` (results printed and written to bench/RESULTS.md); each module
also exposes plain functions that tests/test_bench.py runs at tiny sizes for correctness.
"""

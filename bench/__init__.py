"""Benchmarks: draft latency, training throughput and the learning curve, written to bench/RESULTS.md."""

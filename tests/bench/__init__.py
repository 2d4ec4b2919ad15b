"""Tests of the benchmarks (bench/): their helpers, and their --quick runs (slow)."""

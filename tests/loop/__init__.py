"""Tests of the loop room: the twin, the cycle, importing, scheduling, the CLI."""

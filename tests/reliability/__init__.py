"""Helpers of the reliability tests: figures collection, the bot runner for kill -9, a faulty TCP proxy."""

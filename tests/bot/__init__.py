"""Tests of the bot room (bot/ and the fake Bot API server it is tested against)."""

"""Tests of the storage room: tables, repository functions, migrations."""

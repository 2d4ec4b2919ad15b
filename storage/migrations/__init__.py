"""Alembic migrations of the twin database."""

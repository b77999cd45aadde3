"""Alembic migrations for the ncsweep database (the only way the schema is created)."""

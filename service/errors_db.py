"""Database errors that retrying does not cure (a full disk, a read-only database, a stale schema).

For each, what a user should do about it: the API says so instead of "unreachable, retry shortly".
"""
from __future__ import annotations

# (SQLite's phrases in its message, PostgreSQL's SQLSTATE codes compared whole, what to do): errors that waiting
# does not cure. A code is never looked for inside a message (a port such as 42703 would match); PostgreSQL's
# read-only transaction (25006) is left out: a primary demoted during a failover answers it for a while.
_LASTING = (
    (("database or disk is full",), {"53100"},  # disk_full
     "the database's disk is full; nothing was changed: free space where the database keeps its files, then retry"),
    (("attempt to write a readonly database",), set(),
     "the database is read-only; nothing was changed: make its file writable, then retry"),
    (("no such table", "no such column", "has no column named"), {"42P01", "42703"},  # undefined table/column
     "the database's schema does not match this ncsweep; nothing was changed: run `alembic upgrade head` (GET "
     "/readyz names both revisions)"),
)


def lasting_db_problem(exc: Exception) -> str | None:
    """What to do about a database error that retrying will not cure (full disk, read-only, stale schema)."""
    orig = getattr(exc, "orig", None)
    code = str(getattr(orig, "sqlstate", "") or "").upper()
    sqlite = type(orig).__module__ == "sqlite3"  # the phrases are SQLite's own
    text = str(orig).lower() if sqlite else ""
    return next((say for phrases, codes, say in _LASTING if code in codes or any(p in text for p in phrases)), None)

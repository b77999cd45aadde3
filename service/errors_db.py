"""Database errors that retrying does not cure (a full disk, a read-only database, a stale schema), and what a
user should do about each: the API says so instead of "unreachable, retry shortly"."""
from __future__ import annotations

# driver messages (SQLite's, PostgreSQL's SQLSTATE) of database errors that waiting does not cure, and what to do
_LASTING = (
    (("database or disk is full", "no space left on device", "could not extend file", "53100"),
     "the database's disk is full; nothing was changed: free space where the database keeps its files, then retry"),
    (("readonly database", "read-only", "25006"),
     "the database is read-only; nothing was changed: make its file (or server) writable, then retry"),
    (("no such table", "no such column", "has no column named", "42p01", "42703"),
     "the database's schema does not match this ncsweep; nothing was changed: run `alembic upgrade head` (GET "
     "/readyz names both revisions)"),
)


def lasting_db_problem(exc: Exception) -> str | None:
    """What to do about a database error that retrying will not cure (full disk, read-only, stale schema)."""
    orig = getattr(exc, "orig", None)
    text = f"{orig} {getattr(orig, 'sqlstate', '') or ''}".lower()
    return next((say for needles, say in _LASTING if any(n in text for n in needles)), None)

"""run: one primary run per (sweep, kind, spec hash) — a partial unique index.

Partial, as the unique constraint lets rows whose parent_run_id is NULL repeat.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 12:40:00.000000
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import context, op


revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    if context.is_offline_mode():  # `alembic upgrade --sql`: no data to look at; a duplicate fails the CREATE INDEX
        op.get_context().impl.static_output("-- 0005: CREATE UNIQUE INDEX fails while a sweep holds two primary runs "
                                            "of one (kind, spec_hash); keep one of each and delete the others first")
    else:
        _refuse_duplicates()
    op.create_index('uq_run_primary_hash', 'run', ['sweep_id', 'kind', 'spec_hash'], unique=True,
                    postgresql_where=sa.text('parent_run_id IS NULL'), sqlite_where=sa.text('parent_run_id IS NULL'))


def _refuse_duplicates() -> None:
    duplicates = op.get_bind().execute(sa.text(
        "SELECT sweep_id, kind, spec_hash, count(*) AS n, min(id) AS first_id FROM run WHERE parent_run_id IS NULL "
        "GROUP BY sweep_id, kind, spec_hash HAVING count(*) > 1 ORDER BY sweep_id, first_id")).all()
    if duplicates:  # the index cannot be built over them; which row to keep is the operator's call
        listed = "; ".join(f"sweep {s} {k} spec_hash {h[:12]}…: {n} runs from id {i}" for s, k, h, n, i in duplicates[:10])
        raise RuntimeError(
            f"migration 0005: expected one primary run per (sweep, kind, spec_hash), found {len(duplicates)} group(s) "
            f"with more ({listed}). Keep one run of each group (e.g. the one with metrics) and delete the others "
            "(DELETE FROM run WHERE id IN (...), in SQLite's shell after PRAGMA foreign_keys = ON, so that their "
            "metric and checkpoint rows go with them; their files stay in <artifacts>/run_<id>/ until you remove "
            "them), then migrate again.")


def downgrade() -> None:
    op.drop_index('uq_run_primary_hash', table_name='run')

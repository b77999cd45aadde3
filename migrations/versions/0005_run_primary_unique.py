"""run: one primary run per (sweep, kind, spec hash) — a partial unique index, as the unique constraint lets rows
whose parent_run_id is NULL repeat.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 12:40:00.000000
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index('uq_run_primary_hash', 'run', ['sweep_id', 'kind', 'spec_hash'], unique=True,
                    postgresql_where=sa.text('parent_run_id IS NULL'), sqlite_where=sa.text('parent_run_id IS NULL'))


def downgrade() -> None:
    op.drop_index('uq_run_primary_hash', table_name='run')

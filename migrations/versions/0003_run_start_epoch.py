"""run.start_epoch: the epochs a run's current attempt resumed after, for ETAs timed from that attempt's start.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 10:00:00.000000
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # a plain ALTER on both engines (SQLite >= 3.35 drops columns too): the run table is never copied
    op.add_column('run', sa.Column('start_epoch', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    op.drop_column('run', 'start_epoch')

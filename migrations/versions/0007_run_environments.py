"""run.environments: per attempt, the device, torch, thread count and host the run's numbers came from.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 04:00:00.000000
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # a plain ALTER on both engines (as 0003): the run table is never copied; NULL for the runs made before
    op.add_column('run', sa.Column('environments', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('run', 'environments')

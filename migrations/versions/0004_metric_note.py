"""metric.note: why a metric value is NULL (the metric suite's reason, e.g. a class without samples).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 10:30:00.000000
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('metric', sa.Column('note', sa.String(length=300), nullable=True))


def downgrade() -> None:
    op.drop_column('metric', 'note')

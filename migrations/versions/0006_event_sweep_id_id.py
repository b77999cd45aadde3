"""event: index (sweep_id, id) in place of (sweep_id).

A sweep's events in id order, and its newest one without reading all of them (the stream's since= cursor, the plot
cache's version).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 20:20:00.000000
"""
from __future__ import annotations

from typing import Sequence, Union

from alembic import op


revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index('ix_event_sweep_id_id', 'event', ['sweep_id', 'id'])
    op.drop_index('ix_event_sweep_id', table_name='event')


def downgrade() -> None:
    op.create_index('ix_event_sweep_id', 'event', ['sweep_id'])
    op.drop_index('ix_event_sweep_id_id', table_name='event')

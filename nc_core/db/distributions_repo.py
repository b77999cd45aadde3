"""Reads of the stored metric distributions (results_repo.upsert_distribution writes them)."""
from __future__ import annotations

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from nc_core.db.models import MetricDistribution


def distributions(session: Session, run_id: int, *, split: str | None = None, key: str | None = None,
                  epoch: int | None = None) -> list[MetricDistribution]:
    """Stored distributions of a run at ``epoch`` (None: the last epoch of each (split, key)), by split, key."""
    D = MetricDistribution
    where = [D.run_id == run_id] + ([D.split == split] if split is not None else []) + \
        ([D.key == key] if key is not None else [])
    q = select(D).where(*where)
    if epoch is not None:
        q = q.where(D.epoch == int(epoch))
    else:
        last = (select(D.split, D.key, func.max(D.epoch).label("epoch")).where(*where)
                .group_by(D.split, D.key).subquery())
        q = q.join(last, and_(D.split == last.c.split, D.key == last.c.key, D.epoch == last.c.epoch))
    return list(session.scalars(q.order_by(D.split, D.key)))


def distribution_epochs(session: Session, run_id: int, *, split: str | None = None,
                        key: str | None = None) -> list[int]:
    """The epochs at which a run has stored distributions (of ``split``/``key`` when given), ascending."""
    D = MetricDistribution
    where = [D.run_id == run_id] + ([D.split == split] if split is not None else []) + \
        ([D.key == key] if key is not None else [])
    return list(session.scalars(select(D.epoch).where(*where).distinct().order_by(D.epoch)))

"""Deployments that Azure's data names but ARM no longer lists.

A deployment deleted before the collector first ran (or between two discoveries) still has
metrics and request logs. Its history belongs to it, not to an "unknown" bucket: it is recorded
from the data itself, marked deleted (it is not in ARM now), and discovery corrects the mark if it
turns out to be merely new.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, select

from models.db import upsert
from models.tables import Deployment


def record_unlisted(
    conn: Connection,
    seen: Iterable[tuple[int, str, str, str]],
    now: datetime,
) -> dict[tuple[int, str], int]:
    """Create missing deployments from (resource_id, name, model_name, model_version) seen in
    data; returns (resource_id, lower-cased name) -> deployment id for all of them."""
    wanted = {(res, name): (model, version) for res, name, model, version in seen if name}
    if not wanted:
        return {}
    rows = [
        {
            "resource_id": res,
            "name": name,
            "model_name": model,
            "model_version": version,
            "first_seen": now,
            "last_seen": now,
            "deleted_at": now,
        }
        for (res, name), (model, version) in wanted.items()
    ]
    upsert(conn, Deployment, rows, update=[])  # never touch a deployment discovery wrote
    resource_ids = {res for res, _ in wanted}
    found = conn.execute(
        select(Deployment.id, Deployment.resource_id, Deployment.name).where(
            Deployment.resource_id.in_(resource_ids)
        )
    ).all()
    lowered = {(res, name.lower()) for res, name in wanted}
    return {
        (res, name.lower()): dep_id for dep_id, res, name in found if (res, name.lower()) in lowered
    }

"""Discovery: Foundry resources, their Claude deployments and their Log Analytics workspace.

Per subscription: list Cognitive Services accounts of kind AIServices, their deployments whose
model format is Anthropic, and each account's diagnostic setting that sends RequestResponse logs
to a workspace (whose customer id the query API takes). Things that disappear get ``deleted_at``;
rows are never removed here, so history survives (retention is the only deleter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.core.exceptions import HttpResponseError, ServiceRequestError
from sqlalchemy import Connection, select, update

from collector.azure import AzureClients
from collector.errors import describe_azure_error
from collector.jobs.base import (
    JobContext,
    ScopeOutcome,
    Written,
    resource_group_of,
    run_scope,
    subscription_of,
)
from models.db import upsert
from models.tables import Deployment, Resource

SOURCE = "discovery"
LOG_CATEGORY = "RequestResponse"
LOG_GROUPS = {"alllogs", "audit"}  # category groups that include RequestResponse


@dataclass
class FoundDeployment:
    name: str
    model_name: str
    model_version: str
    model_format: str
    sku_name: str
    capacity: int | None


@dataclass
class FoundResource:
    arm_id: str
    subscription_id: str
    resource_group: str
    name: str
    location: str
    kind: str
    endpoint: str
    workspace_arm_id: str = ""
    workspace_customer_id: str = ""
    deployments: list[FoundDeployment] = field(default_factory=list)
    problem: str = ""
    #: False when the listing failed: keep what the store knows instead of blanking it.
    deployments_known: bool = True
    workspace_known: bool = True


def _wanted(settings: Any, resource_group: str, name: str) -> bool:
    groups = {g.lower() for g in settings.resource_groups}
    names = {n.lower() for n in settings.resource_names}
    return (not groups or resource_group.lower() in groups) and (not names or name.lower() in names)


def _endpoint(account: Any) -> str:
    props = account.properties
    if props is None:
        return ""
    return props.endpoint or ""


def _workspace_of(clients: AzureClients, resource_id: str) -> str:
    """The workspace ARM id (lower-cased) that receives the account's RequestResponse logs."""
    settings_list = clients.monitor(subscription_of(resource_id)).diagnostic_settings.list(
        resource_id
    )
    for setting in settings_list:
        if not setting.workspace_id:
            continue
        for log in setting.logs or []:
            category = (log.category or "").lower()
            group = (log.category_group or "").lower()
            if log.enabled and (category == LOG_CATEGORY.lower() or group in LOG_GROUPS):
                return setting.workspace_id.lower()
    return ""


def _customer_id(clients: AzureClients, workspace_arm_id: str, cache: dict[str, str]) -> str:
    if workspace_arm_id not in cache:
        name = workspace_arm_id.rstrip("/").rsplit("/", 1)[-1]
        workspace = clients.log_analytics(subscription_of(workspace_arm_id)).workspaces.get(
            resource_group_of(workspace_arm_id), name
        )
        cache[workspace_arm_id] = workspace.customer_id or ""
    return cache[workspace_arm_id]


def _claude_deployments(cognitive: Any, group: str, account: str) -> list[FoundDeployment]:
    found = []
    for dep in cognitive.deployments.list(group, account):
        model = dep.properties.model if dep.properties else None
        if model is None or (model.format or "").lower() != "anthropic":
            continue
        found.append(
            FoundDeployment(
                name=dep.name,
                model_name=model.name or "",
                model_version=model.version or "",
                model_format=model.format or "",
                sku_name=dep.sku.name if dep.sku else "",
                capacity=dep.sku.capacity if dep.sku else None,
            )
        )
    return found


def fetch_subscription(
    ctx: JobContext, clients: AzureClients, subscription: str
) -> list[FoundResource]:
    """Everything discovery knows about one subscription, read through the ARM SDKs."""
    cognitive = clients.cognitive(subscription)
    overrides = {k.lower(): v for k, v in ctx.settings.workspace_overrides.items()}
    customer_ids: dict[str, str] = {}
    found: list[FoundResource] = []
    for account in cognitive.accounts.list():
        if (account.kind or "").lower() != "aiservices":
            continue
        group = resource_group_of(account.id)
        if not _wanted(ctx.settings, group, account.name):
            continue
        resource = FoundResource(
            arm_id=account.id.lower(),
            subscription_id=subscription,
            resource_group=group,
            name=account.name,
            location=(account.location or "").lower().replace(" ", ""),
            kind=account.kind,
            endpoint=_endpoint(account),
        )
        try:
            resource.deployments = _claude_deployments(cognitive, group, account.name)
        except (HttpResponseError, ServiceRequestError) as exc:
            # One account's failure (deleted meanwhile, no access) must not hide the others.
            resource.deployments_known = False
            resource.problem = describe_azure_error(exc, source="discovery", scope=account.id)
        if account.name.lower() in overrides:
            resource.workspace_customer_id = overrides[account.name.lower()]
        else:
            # Without Monitoring Reader / workspace read, discovery still works; logs can't.
            try:
                resource.workspace_arm_id = _workspace_of(clients, account.id)
                if resource.workspace_arm_id:
                    resource.workspace_customer_id = _customer_id(
                        clients, resource.workspace_arm_id, customer_ids
                    )
            except (HttpResponseError, ServiceRequestError) as exc:
                resource.workspace_known = False
                resource.problem = resource.problem or describe_azure_error(
                    exc, source="discovery", scope=account.id
                )
        found.append(resource)
    return found


def write_subscription(
    conn: Connection, subscription: str, found: list[FoundResource], now: datetime, settings: Any
) -> Written:
    """Upsert what was seen; mark what was not seen as deleted (within the filters)."""
    resource_updates = [
        "subscription_id",
        "resource_group",
        "name",
        "location",
        "kind",
        "endpoint",
        "workspace_arm_id",
        "workspace_customer_id",
        "last_seen",
        "deleted_at",
    ]
    rows = [
        {
            "arm_id": r.arm_id,
            "subscription_id": r.subscription_id,
            "resource_group": r.resource_group,
            "name": r.name,
            "location": r.location,
            "kind": r.kind,
            "endpoint": r.endpoint,
            "workspace_arm_id": r.workspace_arm_id,
            "workspace_customer_id": r.workspace_customer_id,
            "first_seen": now,
            "last_seen": now,
            "deleted_at": None,
        }
        for r in found
    ]
    workspace_columns = {"workspace_arm_id", "workspace_customer_id"}
    with_ws = [row for row, r in zip(rows, found, strict=True) if r.workspace_known]
    without_ws = [row for row, r in zip(rows, found, strict=True) if not r.workspace_known]
    written = upsert(conn, Resource, with_ws, update=resource_updates) if with_ws else 0
    if without_ws:  # a failed lookup must not erase a workspace the store already knows
        keep = [c for c in resource_updates if c not in workspace_columns]
        written += upsert(conn, Resource, without_ws, update=keep)
    known = conn.execute(
        select(Resource.id, Resource.arm_id, Resource.resource_group, Resource.name).where(
            Resource.subscription_id == subscription
        )
    ).all()
    ids = {row.arm_id: row.id for row in known}
    seen = {r.arm_id for r in found}
    gone = [
        row.id
        for row in known
        if row.arm_id not in seen and _wanted(settings, row.resource_group, row.name)
    ]
    if gone:
        conn.execute(
            update(Resource)
            .where(Resource.id.in_(gone), Resource.deleted_at.is_(None))
            .values(deleted_at=now)
        )
        conn.execute(
            update(Deployment)
            .where(Deployment.resource_id.in_(gone), Deployment.deleted_at.is_(None))
            .values(deleted_at=now)
        )
    dep_rows = [
        {
            "resource_id": ids[r.arm_id],
            "name": d.name,
            "model_name": d.model_name,
            "model_version": d.model_version,
            "model_format": d.model_format,
            "sku_name": d.sku_name,
            "capacity": d.capacity,
            "first_seen": now,
            "last_seen": now,
            "deleted_at": None,
        }
        for r in found
        for d in r.deployments
    ]
    dep_updates = [
        "model_name",
        "model_version",
        "model_format",
        "sku_name",
        "capacity",
        "last_seen",
        "deleted_at",
    ]
    if dep_rows:
        written += upsert(conn, Deployment, dep_rows, update=dep_updates)
    for r in found:
        if not r.deployments_known:
            continue
        names = [d.name for d in r.deployments]
        conn.execute(
            update(Deployment)
            .where(
                Deployment.resource_id == ids[r.arm_id],
                Deployment.deleted_at.is_(None),
                Deployment.name.not_in(names),
            )
            .values(deleted_at=now)
        )
    problems = [r.problem for r in found if r.problem]
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return Written(rows=written, status="partial", error=problems[0] + more)
    return Written(rows=written)


def run(ctx: JobContext) -> list[ScopeOutcome]:
    outcomes = []
    for subscription in ctx.settings.subscriptions:
        if ctx.stopping():
            break
        now = ctx.clock()
        outcomes.append(
            run_scope(
                ctx,
                SOURCE,
                f"/subscriptions/{subscription}",
                lambda clients, s=subscription: fetch_subscription(ctx, clients, s),
                lambda conn, found, s=subscription, t=now: write_subscription(
                    conn, s, found, t, ctx.settings
                ),
            )
        )
    return outcomes

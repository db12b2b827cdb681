"""``foundry-watch doctor``: check each permission and setting the collector needs, per scope.

Each check makes the smallest real call of its source, so a green doctor means the collector will
work, and a red line names the missing role or setting. The cost check spends one Cost Management
query (1 QPU) per subscription.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from collector.azure import AzureClients
from collector.errors import describe_azure_error
from collector.jobs.base import JobContext, resource_group_of
from collector.jobs.discovery import fetch_subscription

METRICS_NAMESPACE = "Microsoft.CognitiveServices/accounts"


@dataclass
class Check:
    name: str
    scope: str
    ok: bool
    detail: str


def _token_checks(ctx: JobContext) -> list[Check]:
    checks = []
    s = ctx.settings
    for label, audience in (
        ("token: ARM", s.arm_audience),
        ("token: metrics", s.metrics_audience),
        ("token: logs", s.logs_audience),
    ):
        try:
            ctx.credential.get_token(s.scope_for(audience))
            checks.append(Check(label, audience, True, "credential issues tokens"))
        except Exception as exc:
            checks.append(
                Check(
                    label,
                    audience,
                    False,
                    describe_azure_error(exc, source="token", scope=audience),
                )
            )
    return checks


def _cost_check(clients: AzureClients, subscription: str, now) -> Check:
    from azure.mgmt.costmanagement.models import (
        QueryAggregation,
        QueryDataset,
        QueryDefinition,
        QueryTimePeriod,
    )

    scope = f"/subscriptions/{subscription}"
    definition = QueryDefinition(
        type="ActualCost",
        timeframe="Custom",
        time_period=QueryTimePeriod(from_property=now - timedelta(days=1), to=now),
        dataset=QueryDataset(
            granularity="Daily",
            aggregation={"totalCost": QueryAggregation(name="Cost", function="Sum")},
        ),
    )
    try:
        clients.costs().query.usage(scope, definition)
        return Check("costs", scope, True, "Cost Management query works")
    except Exception as exc:
        return Check("costs", scope, False, describe_azure_error(exc, source="costs", scope=scope))


def run_doctor(ctx: JobContext) -> list[Check]:
    checks = _token_checks(ctx)
    now = ctx.clock()
    for subscription in ctx.settings.subscriptions:
        scope = f"/subscriptions/{subscription}"
        clients = ctx.clients()
        try:
            found = fetch_subscription(ctx, clients, subscription)
        except Exception as exc:
            detail = describe_azure_error(exc, source="discovery", scope=scope)
            checks.append(Check("discovery", scope, False, detail))
            continue
        claude = sum(len(r.deployments) for r in found)
        checks.append(
            Check(
                "discovery",
                scope,
                bool(found),
                f"{len(found)} Foundry resources, {claude} Claude deployments"
                if found
                else "no AIServices account visible: grant Reader or check the filters",
            )
        )
        for resource in found:
            has_logs = bool(resource.workspace_customer_id)
            checks.append(
                Check(
                    "diagnostic setting",
                    resource.arm_id,
                    has_logs,
                    f"RequestResponse logs go to workspace {resource.workspace_customer_id}"
                    if has_logs
                    else resource.problem
                    or "no RequestResponse diagnostic setting to a Log Analytics workspace: "
                    "add one (Monitoring > Diagnostic settings) or set workspace_overrides",
                )
            )
        by_region: dict[str, list[str]] = {}
        for resource in found:
            by_region.setdefault(resource.location, []).append(resource.arm_id)
        for region, ids in sorted(by_region.items()):
            where = f"{scope} ({region})"
            try:
                clients.metrics(region).query_resources(
                    resource_ids=ids[:50],
                    metric_namespace=METRICS_NAMESPACE,
                    metric_names=["ModelRequests"],
                    timespan=(now - timedelta(minutes=15), now),
                    granularity=timedelta(minutes=5),
                    aggregations=["Total"],
                )
                checks.append(Check("metrics", where, True, "metrics batch query works"))
            except Exception as exc:
                checks.append(
                    Check(
                        "metrics",
                        where,
                        False,
                        describe_azure_error(exc, source="metrics", scope=where),
                    )
                )
        for workspace in sorted(
            {r.workspace_customer_id for r in found if r.workspace_customer_id}
        ):
            try:
                clients.logs().query_workspace(
                    workspace, "AzureDiagnostics | take 1", timespan=timedelta(hours=1)
                )
                checks.append(Check("logs", workspace, True, "Log Analytics query works"))
            except Exception as exc:
                checks.append(
                    Check(
                        "logs",
                        workspace,
                        False,
                        describe_azure_error(exc, source="logs", scope=workspace),
                    )
                )
        groups = sorted({resource_group_of(r.arm_id) for r in found})
        checks.append(_cost_check(clients, subscription, now))
        if groups:
            checks[-1].detail += f" (Claude is billed under resource groups {', '.join(groups)})"
    return checks

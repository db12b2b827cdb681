"""Azure Resource Manager reads: accounts, deployments, diagnostic settings, workspaces.

What the collector discovers through ``azure-mgmt-cognitiveservices`` (api-version 2025-09-01),
``azure-mgmt-monitor`` 6.x ``diagnostic_settings`` (2021-05-01-preview; 7.0 dropped that
operation group) and ``azure-mgmt-loganalytics`` (2025-07-01). Any api-version is accepted.

Shapes follow Azure/azure-rest-api-specs examples: cognitiveservices
``stable/2025-06-01/examples/ListAccountsBySubscription.json``, ``stable/2025-09-01/examples/
GetAccount.json`` / ``GetDeployment.json``; monitor ``preview/2021-05-01-preview/examples/
listDiagnosticSettings.json``; operationalinsights ``stable/2025-07-01/examples/
WorkspacesListByResourceGroup.json`` (whose ids come back lower-cased, as do diagnostic settings'
``workspaceId`` values). ARM behaviour modelled:

- paths and ids are case-insensitive (one dispatcher parses the segments itself);
- ``api-version`` is required (400 ``MissingApiVersionParameter``);
- lists page with an absolute ``nextLink`` carrying ``$skipToken``; the SDK re-sends the client's
  api-version on it; page size ``state.arm_page_size``;
- a deleted deployment disappears from the list and its GET answers 404; a deployment created
  later than ``now`` does not exist yet;
- errors are ``{"error": {"code", "message"}}`` (SubscriptionNotFound, ResourceGroupNotFound,
  ResourceNotFound, DeploymentNotFound), with ``x-ms-request-id``.
- one resource (the second) sends its logs with ``categoryGroup: allLogs`` instead of the
  ``RequestResponse`` category — both forms exist in the wild and the collector must read both.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from emulator import errors
from emulator.auth import ARM_AUDIENCE, check_bearer
from emulator.faults import finish, intercept
from emulator.world import Deployment, Resource, Workspace, World, stable_uuid

__all__ = ["routes"]

_CS = "microsoft.cognitiveservices"
_OI = "microsoft.operationalinsights"
_INSIGHTS = "microsoft.insights"
_DIAG_NAME = "foundry-watch-logs"


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _tenant(world: World) -> str:
    return stable_uuid(world.seed, "tenant")


def _system_data(created: datetime) -> dict[str, Any]:
    return {
        "createdBy": "platform-team@contoso.com",
        "createdByType": "User",
        "createdAt": _iso(created),
        "lastModifiedBy": "platform-team@contoso.com",
        "lastModifiedByType": "User",
        "lastModifiedAt": _iso(created),
    }


def account_json(world: World, res: Resource) -> dict[str, Any]:
    created = min(d.created_at for d in world.deployments_of(res))
    return {
        "id": res.arm_id,
        "name": res.name,
        "type": "Microsoft.CognitiveServices/accounts",
        "location": res.location,
        "kind": "AIServices",
        "sku": {"name": "S0"},
        "tags": {"team": "platform", "costCenter": "ai-" + res.resource_group.split("-")[-1]},
        "etag": f'"{stable_uuid(world.seed, "etag", res.name)}"',
        "identity": {
            "type": "SystemAssigned",
            "principalId": stable_uuid(world.seed, "principal", res.name),
            "tenantId": _tenant(world),
        },
        "systemData": _system_data(created),
        "properties": {
            "endpoint": f"https://{res.name}.cognitiveservices.azure.com/",
            "endpoints": {
                "AI Foundry API": res.endpoint,
                "OpenAI Language Model Instance API": f"https://{res.name}.openai.azure.com/",
                "Anthropic API": f"{res.endpoint}anthropic/",
            },
            "customSubDomainName": res.name,
            "provisioningState": "Succeeded",
            "publicNetworkAccess": "Enabled",
            "disableLocalAuth": False,
            "allowProjectManagement": True,
            "dateCreated": _iso(created),
        },
    }


def deployment_json(world: World, dep: Deployment) -> dict[str, Any]:
    return {
        "id": f"{dep.resource.arm_id}/deployments/{dep.name}",
        "name": dep.name,
        "type": "Microsoft.CognitiveServices/accounts/deployments",
        "etag": f'"{stable_uuid(world.seed, "etag", dep.resource.name, dep.name)}"',
        "systemData": _system_data(dep.created_at),
        "sku": {"name": dep.sku_name, "capacity": dep.capacity},
        "properties": {
            "model": {
                "format": "Anthropic",
                "name": dep.model_name,
                "version": dep.model_version,
            },
            "versionUpgradeOption": "NoAutoUpgrade",
            "capabilities": {"chatCompletion": "true"},
            "raiPolicyName": "Microsoft.DefaultV2",
            "currentCapacity": dep.capacity,
            "rateLimits": [
                {"key": "request", "renewalPeriod": 60, "count": dep.capacity},
                {"key": "token", "renewalPeriod": 60, "count": dep.capacity * 1000},
            ],
            "provisioningState": "Succeeded",
        },
    }


def workspace_json(ws: Workspace) -> dict[str, Any]:
    return {
        "id": ws.arm_id.lower(),
        "name": ws.name,
        "type": "Microsoft.OperationalInsights/workspaces",
        "location": ws.location,
        "tags": {},
        "properties": {
            "customerId": ws.customer_id,
            "provisioningState": "Succeeded",
            "sku": {"name": "PerGB2018"},
            "retentionInDays": 30,
            "publicNetworkAccessForQuery": "Enabled",
            "publicNetworkAccessForIngestion": "Enabled",
        },
    }


def diagnostic_setting_json(world: World, res: Resource) -> dict[str, Any]:
    retention = {"enabled": False, "days": 0}
    if world.resources.index(res) % 4 == 1:
        logs = [{"categoryGroup": "allLogs", "enabled": True, "retentionPolicy": retention}]
    else:
        logs = [
            {"category": cat, "enabled": cat == "RequestResponse", "retentionPolicy": retention}
            for cat in ("Audit", "RequestResponse", "AzureOpenAIRequestUsage", "Trace")
        ]
    return {
        "id": f"{res.arm_id.lower()}/providers/microsoft.insights/diagnosticSettings/{_DIAG_NAME}",
        "type": "Microsoft.Insights/diagnosticSettings",
        "name": _DIAG_NAME,
        "properties": {
            "workspaceId": res.workspace.arm_id.lower(),
            "logAnalyticsDestinationType": None,
            "metrics": [{"category": "AllMetrics", "enabled": True, "retentionPolicy": retention}],
            "logs": logs,
        },
    }


# ------------------------------------------------------------------------------------ errors
def _not_found(code: str, message: str) -> Response:
    return errors.arm_error(404, code, message)


def _resource_not_found(kind: str, name: str, rg: str) -> Response:
    return _not_found(
        "ResourceNotFound",
        f"The Resource '{kind}/{name}' under resource group '{rg}' was not found. For more "
        "details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


def unknown_path(request: Request) -> Response:
    """ARM's answer for a path no provider serves."""
    return errors.arm_error(
        404,
        "NotFound",
        f"The requested resource '{request.url.path}' does not exist or the route is not "
        "supported by the emulator.",
    )


# ------------------------------------------------------------------------------------ paging
def _page(
    request: Request, items: list[dict[str, Any]], page_size: int
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of ``items`` and the absolute ``nextLink`` of the following one (or None)."""
    try:
        skip = max(0, int(request.query_params.get("$skipToken", "0")))
    except ValueError:
        skip = 0
    size = max(1, page_size)
    page = items[skip : skip + size]
    if skip + size >= len(items):
        return page, None
    params = {"api-version": request.query_params.get("api-version", ""), "$skipToken": skip + size}
    base = str(request.base_url).rstrip("/")
    return page, f"{base}{request.url.path}?{urlencode(params)}"


def _list(request: Request, items: list[dict[str, Any]]) -> dict[str, Any]:
    page, next_link = _page(request, items, request.app.state.emulator.arm_page_size)
    body: dict[str, Any] = {"value": page}
    if next_link:
        body["nextLink"] = next_link
    return body


# ------------------------------------------------------------------------------------ dispatch
def _match_sub(world: World, sub: str) -> str | None:
    return next((s for s in world.subscriptions if s.lower() == sub.lower()), None)


def _rg_exists(world: World, sub: str, rg: str) -> bool:
    groups = {(r.subscription_id.lower(), r.resource_group.lower()) for r in world.resources}
    groups |= {(w.subscription_id.lower(), w.resource_group.lower()) for w in world.workspaces}
    return (sub.lower(), rg.lower()) in groups


def _accounts(request: Request, world: World, seg: list[str]) -> Response:
    """``.../providers/Microsoft.CognitiveServices/accounts[/{name}[/deployments[/{d}]]]``."""
    low = [s.lower() for s in seg]
    sub = seg[1]
    rg = seg[3] if low[2] == "resourcegroups" else None
    base = 6 if rg is not None else 4  # index of "accounts"
    rest = seg[base + 1 :]
    scoped = [
        r
        for r in world.resources
        if r.subscription_id.lower() == sub.lower()
        and (rg is None or r.resource_group.lower() == rg.lower())
    ]
    if not rest:
        return JSONResponse(_list(request, [account_json(world, r) for r in scoped]))
    if rg is None:
        return unknown_path(request)
    name = rest[0]
    res = next((r for r in scoped if r.name.lower() == name.lower()), None)
    if res is None:
        return _resource_not_found("Microsoft.CognitiveServices/accounts", name, rg)
    if len(rest) == 1:
        return JSONResponse(account_json(world, res))
    if rest[1].lower() != "deployments" or len(rest) > 3:
        return unknown_path(request)
    now = world.now()
    live = [d for d in world.deployments_of(res) if d.active_at(now)]
    if len(rest) == 2:
        return JSONResponse(_list(request, [deployment_json(world, d) for d in live]))
    dep = next((d for d in live if d.name.lower() == rest[2].lower()), None)
    if dep is None:
        return _not_found("DeploymentNotFound", f"Deployment '{rest[2]}' not found.")
    return JSONResponse(deployment_json(world, dep))


def _workspaces(request: Request, world: World, seg: list[str]) -> Response:
    low = [s.lower() for s in seg]
    sub = seg[1]
    rg = seg[3] if low[2] == "resourcegroups" else None
    base = 6 if rg is not None else 4
    rest = seg[base + 1 :]
    scoped = [
        w
        for w in world.workspaces
        if w.subscription_id.lower() == sub.lower()
        and (rg is None or w.resource_group.lower() == rg.lower())
    ]
    if not rest:
        return JSONResponse(_list(request, [workspace_json(w) for w in scoped]))
    if rg is None or len(rest) > 1:
        return unknown_path(request)
    ws = next((w for w in scoped if w.name.lower() == rest[0].lower()), None)
    if ws is None:
        return _resource_not_found("Microsoft.OperationalInsights/workspaces", rest[0], rg)
    return JSONResponse(workspace_json(ws))


def _diagnostic_settings(request: Request, world: World, seg: list[str], at: int) -> Response:
    """``{resourceUri}/providers/Microsoft.Insights/diagnosticSettings[/{name}]``."""
    resource_uri = "/" + "/".join(seg[:at])
    res = world.resource(resource_uri)
    if res is None:
        if len(seg) >= 8 and seg[2].lower() == "resourcegroups":
            return _resource_not_found(f"{seg[5]}/{seg[6]}", seg[7], seg[3])
        return unknown_path(request)
    setting = diagnostic_setting_json(world, res)
    rest = seg[at + 3 :]
    if not rest:
        return JSONResponse({"value": [setting]})
    if len(rest) == 1 and rest[0].lower() == _DIAG_NAME:
        return JSONResponse(setting)
    return _not_found("ResourceNotFound", f"The diagnostic setting '{rest[0]}' doesn't exist.")


def _subscriptions(request: Request, world: World, seg: list[str]) -> Response:
    def sub_json(s: str) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{s}",
            "subscriptionId": s,
            "tenantId": _tenant(world),
            "displayName": f"Contoso AI {world.subscriptions.index(s) + 1}",
            "state": "Enabled",
        }

    if len(seg) == 1:
        return JSONResponse(_list(request, [sub_json(s) for s in world.subscriptions]))
    sub = _match_sub(world, seg[1])
    return JSONResponse(sub_json(sub)) if sub else unknown_path(request)


def _route(request: Request, world: World, seg: list[str]) -> Response:
    low = [s.lower() for s in seg]
    if len(seg) <= 2:
        return _subscriptions(request, world, seg)
    if _match_sub(world, seg[1]) is None:
        return _not_found(
            "SubscriptionNotFound", f"The subscription '{seg[1]}' could not be found."
        )
    # {resourceUri}/providers/Microsoft.Insights/diagnosticSettings — the last provider segment.
    for i in range(len(low) - 2, 1, -1):
        if low[i] == "providers" and low[i + 1] == _INSIGHTS:
            if i + 2 < len(low) and low[i + 2] == "diagnosticsettings":
                return _diagnostic_settings(request, world, seg, i)
            return unknown_path(request)
    if low[2] == "resourcegroups":
        if len(seg) < 4:
            return unknown_path(request)
        if not _rg_exists(world, seg[1], seg[3]):
            return _not_found(
                "ResourceGroupNotFound", f"Resource group '{seg[3]}' could not be found."
            )
        provider_at = 4
    else:
        provider_at = 2
    if len(low) < provider_at + 3 or low[provider_at] != "providers":
        return unknown_path(request)
    namespace, rtype = low[provider_at + 1], low[provider_at + 2]
    if namespace == _CS and rtype == "accounts":
        return _accounts(request, world, seg)
    if namespace == _OI and rtype == "workspaces":
        return _workspaces(request, world, seg)
    return unknown_path(request)


async def arm_get(request: Request) -> Response:
    """Every ARM GET under ``/subscriptions``: auth, api-version, faults, then dispatch."""
    state = request.app.state.emulator
    denied = check_bearer(request, ARM_AUDIENCE, api="arm")
    if denied is not None:
        return denied
    if not request.query_params.get("api-version"):
        return errors.arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    answer, rule = await intercept(
        request, "arm", is_next_page="$skipToken" in request.query_params
    )
    if answer is not None:
        return answer
    seg = [s for s in request.url.path.split("/") if s]
    response = _route(request, state.world, seg)
    response.headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
    response.headers.setdefault("x-ms-ratelimit-remaining-subscription-reads", "249")
    return finish(rule, response)


def routes() -> list[BaseRoute]:
    return [
        Route("/subscriptions", arm_get, methods=["GET"]),
        Route("/subscriptions/{rest:path}", arm_get, methods=["GET"]),
    ]

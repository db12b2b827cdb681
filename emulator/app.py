"""The emulator's Starlette application: every endpoint module's routes plus the admin API.

Route order matters: specific routes (identity, admin, metrics, logs, costs, data plane) come
before ARM's ``/subscriptions/{rest:path}`` catch-all, because Cost Management's query also lives
under ``/subscriptions``. Paths nothing serves get a 404 in the shape of the API they look like.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from emulator import arm, dataplane, errors, identity
from emulator.faults import ENDPOINTS, KINDS, FaultRule, endpoint_for_path
from emulator.state import EmulatorState

__all__ = ["build_app"]

#: Endpoint modules written separately; each is mounted when present.
OPTIONAL_MODULES = ("metrics", "logs", "costs", "kql")


# ------------------------------------------------------------------------------ admin
async def health(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    world = state.world
    return JSONResponse(
        {
            "status": "ok",
            "seed": world.seed,
            "now": world.now().isoformat(),
            "start": world.start.isoformat(),
            "subscriptions": world.subscriptions,
            "resources": [
                {
                    "name": r.name,
                    "id": r.arm_id,
                    "location": r.location,
                    "endpoint": r.endpoint,
                    "workspace": r.workspace.customer_id,
                    "deployments": [d.name for d in world.deployments_of(r)],
                }
                for r in world.resources
            ],
            "fault_rules": len(state.faults.rules()),
            "live_requests": len(world.live_records()),
        }
    )


async def faults_admin(request: Request) -> Response:
    """GET lists the rules, POST adds one (JSON of :class:`FaultRule` fields), DELETE clears."""
    faults = request.app.state.emulator.faults
    if request.method == "DELETE":
        faults.clear()
        return Response(status_code=204)
    if request.method == "POST":
        try:
            body: Any = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise TypeError("body must be a JSON object")
            allowed = {"kind", "count", "retry_after_s", "delay_s", "status", "endpoint"}
            allowed.add("path_contains")
            unknown = set(body) - allowed
            if unknown:
                raise TypeError(f"unknown fields {sorted(unknown)}")
            rule = faults.add(FaultRule(**body))
        except (TypeError, ValueError) as exc:
            return JSONResponse(
                {"error": str(exc), "kinds": list(KINDS), "endpoints": list(ENDPOINTS)},
                status_code=400,
            )
        return JSONResponse(rule.to_json(), status_code=201)
    return JSONResponse({"rules": [r.to_json() for r in faults.rules()]})


async def keys(request: Request) -> Response:
    """Data-plane keys by resource (a local test emulator: there is nothing to protect)."""
    return JSONResponse(dict(request.app.state.emulator.api_keys))


def _admin_routes() -> list[BaseRoute]:
    return [
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/_emulator/faults", faults_admin, methods=["GET", "POST", "DELETE"]),
        Route("/_emulator/keys", keys, methods=["GET"]),
    ]


# ------------------------------------------------------------------------------ fallbacks
async def _not_found(request: Request, exc: Exception) -> Response:
    """404/405 for unrouted paths, shaped like the API the path belongs to."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    endpoint = endpoint_for_path(request.url.path)
    if request.url.path.startswith("/_emulator/"):
        return JSONResponse({"error": "not found"}, status_code=status)
    if status == 405:
        message = f"The requested method {request.method} is not allowed for this path."
        code = "MethodNotAllowed"
    else:
        message = f"The requested path '{request.url.path}' does not exist."
        code = "PathNotFoundError" if endpoint == "logs" else "NotFound"
    if endpoint == "dataplane":
        return errors.anthropic_error(status, message)
    if endpoint == "token":
        return errors.identity_error(status, message)
    return errors.api_error(endpoint, status, code, message)


def _optional_routes() -> list[BaseRoute]:
    found: list[BaseRoute] = []
    for name in OPTIONAL_MODULES:
        qualified = f"emulator.{name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            if exc.name != qualified:
                raise
            continue
        make = getattr(module, "routes", None)
        if make is not None:
            found.extend(make())
    return found


def build_app(state: EmulatorState) -> Starlette:
    """The ASGI app serving ``state``; handlers reach it as ``request.app.state.emulator``."""
    route_list: list[BaseRoute] = [
        *identity.routes(),
        *_admin_routes(),
        *_optional_routes(),
        *dataplane.routes(),
        *arm.routes(),
    ]
    app = Starlette(
        routes=route_list,
        exception_handlers={404: _not_found, 405: _not_found},
    )
    app.state.emulator = state
    return app

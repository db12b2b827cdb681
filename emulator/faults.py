"""Faults on demand: make the next N calls to an endpoint fail the way Azure fails.

Rules are added through ``POST /_emulator/faults`` (or :meth:`Faults.add` in tests) and consumed
one call at a time. Endpoint handlers call :func:`intercept` first; it applies every kind that
does not depend on the handler's answer (throttle, error, slow, timeout, malformed, and
``nextlink_break`` on a next-page request) and hands the remaining kinds back: ``truncated``
(apply :func:`finish` to the real answer) and ``partial`` (the logs handler answers a
``PartialError``). ``expired_token`` is consumed by :func:`emulator.auth.check_bearer`.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from emulator import errors

__all__ = [
    "ENDPOINTS",
    "KINDS",
    "FaultRule",
    "Faults",
    "apply_generic",
    "endpoint_for_path",
    "finish",
    "intercept",
]

ENDPOINTS = ("token", "arm", "metrics", "logs", "costs", "dataplane")
KINDS = (
    "throttle",
    "error",
    "slow",
    "timeout",
    "malformed",
    "truncated",
    "partial",
    "expired_token",
    "nextlink_break",
)
_GENERIC = frozenset({"throttle", "error", "slow", "timeout", "malformed", "truncated"})
_ids = itertools.count(1)


@dataclass
class FaultRule:
    """One fault: fire ``count`` times (``None`` = until cleared) on matching calls.

    ``endpoint`` is one of :data:`ENDPOINTS` or ``"*"``; ``path_contains`` narrows it to calls
    whose path contains that text (case-insensitive), e.g. ``"/deployments"``.
    """

    kind: str
    count: int | None = 1
    retry_after_s: float | None = None
    delay_s: float | None = None
    status: int | None = None
    endpoint: str = "*"
    path_contains: str | None = None
    id: int = field(default_factory=lambda: next(_ids))
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {KINDS}")
        if self.endpoint != "*" and self.endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {self.endpoint!r}; expected one of {ENDPOINTS}")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be >= 1 (or null for unlimited)")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Faults:
    """Thread-safe rule list; the admin routes and the tests share one instance."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def add(self, rule: FaultRule | None = None, /, **kwargs: Any) -> FaultRule:
        """Add ``rule`` (or build one from keyword arguments) and return it."""
        rule = rule or FaultRule(**kwargs)
        with self._lock:
            self._rules.append(rule)
        return rule

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(
        self,
        endpoint: str,
        *,
        path: str | None = None,
        kinds: Iterable[str] | None = None,
    ) -> FaultRule | None:
        """Consume one firing of the first rule matching ``endpoint`` (and path/kinds)."""
        wanted = None if kinds is None else set(kinds)
        lowered = (path or "").lower()
        with self._lock:
            for rule in self._rules:
                if rule.endpoint not in ("*", endpoint):
                    continue
                if wanted is not None and rule.kind not in wanted:
                    continue
                if rule.path_contains and rule.path_contains.lower() not in lowered:
                    continue
                rule.fired += 1
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count <= 0:
                        self._rules.remove(rule)
                return rule
        return None


def endpoint_for_path(path: str) -> str:
    """Which fault endpoint a request path belongs to (see the URL layout in server.py)."""
    p = path.lower()
    if p.startswith("/msi/"):
        return "token"
    if p.startswith("/metrics/"):
        return "metrics"
    if p.startswith("/logs/"):
        return "logs"
    if p.startswith(("/foundry/", "/anthropic/")):
        return "dataplane"
    if "/providers/microsoft.costmanagement/" in p:
        return "costs"
    return "arm"


def _throttle(rule: FaultRule, api: str) -> Response:
    retry = rule.retry_after_s if rule.retry_after_s is not None else 1
    retry_s = str(max(0, round(retry)))
    if api == "metrics":
        status = rule.status or 529
        return errors.arm_error(
            status,
            "TooManyRequests",
            "The request was throttled. Please retry after some time.",
            headers={"Retry-After": retry_s},
        )
    status = rule.status or 429
    if api == "costs":
        # Cost Management signals its QPU quota in its own headers, not Retry-After.
        return errors.arm_error(
            status,
            "429",
            "Too many requests. Please retry.",
            headers={
                "x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after": retry_s,
                "x-ms-ratelimit-microsoft.costmanagement-qpu-consumed": "12",
                "x-ms-ratelimit-microsoft.costmanagement-qpu-remaining": "0",
            },
        )
    if api == "logs":
        return errors.logs_error(
            status,
            "ThrottledError",
            "Too many requests. Please retry after some time.",
            headers={"Retry-After": retry_s},
        )
    if api == "dataplane":
        if status == 529:
            return errors.anthropic_error(529, "Overloaded")
        return errors.anthropic_error(
            status,
            "Requests to this deployment have exceeded the rate limit of your current tier. "
            f"Please retry after {retry_s} seconds.",
            headers={"retry-after": retry_s},
        )
    if api == "token":
        return errors.identity_error(status, "Too many requests")
    return errors.arm_error(
        status,
        "SubscriptionRequestsThrottled",
        "Number of 'read' requests for subscription actioned by 'Microsoft.CognitiveServices' "
        f"exceeded the limit. Please retry after '{retry_s}' seconds.",
        headers={"Retry-After": retry_s, "x-ms-ratelimit-remaining-subscription-reads": "0"},
    )


_CODES = {
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


def _error(status: int, api: str) -> Response:
    code = _CODES.get(status, "InternalServerError")
    message = f"The server encountered an internal error ({status}). Please retry the request."
    if api == "dataplane":
        if status == 403:
            # Raised by the gateway (RBAC / network rules), before the model is reached.
            return errors.cognitive_error(
                403,
                "The principal does not have access to the data action "
                "Microsoft.CognitiveServices/accounts/*/action, or access is denied by the "
                "resource's network rules.",
                code="PermissionDenied",
            )
        return errors.anthropic_error(status, "Overloaded" if status == 529 else message)
    if status == 403:
        return errors.api_error(
            api,
            403,
            "AuthorizationFailed",
            "The client does not have authorization to perform this action.",
        )
    return errors.api_error(api, status, code, message)


async def apply_generic(rule: FaultRule, api: str) -> Response | None:
    """The answer for a rule kind every endpoint shares, or None to carry on normally.

    ``slow`` sleeps and returns None (the real answer follows late); kinds that need the real
    answer (``truncated``, ``partial``) also return None.
    """
    kind = rule.kind
    if kind == "throttle":
        return _throttle(rule, api)
    if kind == "error" or kind == "nextlink_break":
        return _error(rule.status or 500, api)
    if kind == "slow":
        await asyncio.sleep(rule.delay_s if rule.delay_s is not None else 3.0)
        return None
    if kind == "timeout":
        # Longer than any client waits; if one does wait, it gets what a gateway would send.
        await asyncio.sleep(rule.delay_s if rule.delay_s is not None else 600.0)
        return _error(504, api)
    if kind == "malformed":
        return Response(
            b'{"value": [{"id": "/subscriptions/', status_code=200, media_type="application/json"
        )
    return None


async def intercept(
    request: Request, api: str, *, is_next_page: bool = False
) -> tuple[Response | None, FaultRule | None]:
    """Take the fault (if any) for this call: ``(answer to send instead, rule)``.

    When the answer is None but a rule came back, the handler finishes the job: ``truncated`` →
    wrap the real response with :func:`finish`; ``partial`` → (logs) a PartialError answer.
    """
    faults: Faults = request.app.state.emulator.faults
    kinds = set(_GENERIC)
    if api == "logs":
        kinds.add("partial")
    if is_next_page:
        kinds.add("nextlink_break")
    rule = faults.take(endpoint_for_path(request.url.path), path=request.url.path, kinds=kinds)
    if rule is None:
        return None, None
    if rule.kind in ("slow", "timeout"):
        default = 3.0 if rule.kind == "slow" else 600.0
        await _wait(request, rule.delay_s if rule.delay_s is not None else default)
        if rule.kind == "slow":
            return None, rule
        return _error(504, api), rule
    return await apply_generic(rule, api), rule


async def _wait(request: Request, seconds: float) -> None:
    """Sleep, but stop early once the client has hung up (its timeout fired)."""
    await request.body()  # read it now: the disconnect poll below must not eat body chunks
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        if await request.is_disconnected():
            return
        await asyncio.sleep(min(0.1, left))


def finish(rule: FaultRule | None, response: Response) -> Response:
    """Apply a ``truncated`` rule to the real answer; anything else passes through."""
    if rule is None or rule.kind != "truncated":
        return response
    return _TruncatedResponse(response)


class _TruncatedResponse(Response):
    """Sends the headers (full Content-Length) and half the body, then drops the connection.

    That is what a reset mid-body looks like to a client: an incomplete read, not a JSON error.
    """

    def __init__(self, inner: Response) -> None:
        self.inner = inner
        self.status_code = inner.status_code
        self.body = inner.body
        self.raw_headers = inner.raw_headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        cut = max(1, len(self.body) // 2)
        await send({"type": "http.response.body", "body": self.body[:cut], "more_body": True})
        # Returning without the final body message makes the server close the connection.

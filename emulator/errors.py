"""Error bodies in the shape each Azure API really returns.

The collector's error handling is tested against these, so each API gets its own shape rather
than one generic body: ARM/Cost Management/metrics wrap ``{"error": {"code", "message"}}``,
Log Analytics adds ``correlationId``/``innererror`` (OneAPI), the Foundry Anthropic endpoint
answers gateway failures (auth) in the Cognitive Services shape and model errors in Anthropic's
``{"type": "error", "error": {...}}`` shape, and the App Service identity endpoint answers
``{"statusCode", "message"}`` (what MSAL's App Service client reads back).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from starlette.responses import JSONResponse, Response

__all__ = [
    "ANTHROPIC_ERROR_TYPES",
    "anthropic_error",
    "api_error",
    "arm_error",
    "cognitive_error",
    "identity_error",
    "logs_error",
    "request_id_headers",
]

#: HTTP status -> Anthropic ``error.type`` (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    504: "api_error",
    529: "overloaded_error",
}


def request_id_headers() -> dict[str, str]:
    """ARM-style tracing headers; Azure sends them on every answer, errors included."""
    rid = str(uuid.uuid4())
    return {"x-ms-request-id": rid, "x-ms-correlation-request-id": rid}


def _merge(base: Mapping[str, str], extra: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(base)
    if extra:
        out.update(extra)
    return out


def arm_error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """ARM / Cost Management / metrics batch error: ``{"error": {"code", "message"}}``."""
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers=_merge(request_id_headers(), headers),
    )


def logs_error(
    status: int,
    code: str,
    message: str,
    *,
    inner_code: str | None = None,
    inner_message: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Log Analytics query API error (OneAPI): message, code, correlationId, innererror."""
    correlation = str(uuid.uuid4())
    err: dict[str, object] = {"message": message, "code": code, "correlationId": correlation}
    if inner_code:
        err["innererror"] = {"code": inner_code, "message": inner_message or message}
    return JSONResponse(
        {"error": err},
        status_code=status,
        headers=_merge({"x-ms-request-id": correlation}, headers),
    )


def anthropic_error(
    status: int,
    message: str,
    *,
    error_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Anthropic Messages API error: ``{"type": "error", "error": {"type", "message"}}``."""
    etype = error_type or ANTHROPIC_ERROR_TYPES.get(status, "api_error")
    return JSONResponse(
        {"type": "error", "error": {"type": etype, "message": message}},
        status_code=status,
        headers=dict(headers or {}),
    )


def cognitive_error(
    status: int, message: str, *, code: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    """Cognitive Services gateway error (auth failures happen before the model is reached)."""
    return JSONResponse(
        {"error": {"code": code or str(status), "message": message}},
        status_code=status,
        headers=dict(headers or {}),
    )


def identity_error(status: int, message: str) -> Response:
    """App Service managed identity endpoint error: ``{"statusCode", "message"}``."""
    return JSONResponse({"statusCode": status, "message": message}, status_code=status)


def api_error(
    api: str,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error in the shape of ``api`` (arm, costs, metrics, logs, dataplane, token)."""
    if api == "logs":
        return logs_error(status, code, message, headers=headers)
    if api == "dataplane":
        return anthropic_error(status, message, headers=headers)
    if api == "token":
        return identity_error(status, message)
    return arm_error(status, code, message, headers=headers)

"""Bearer tokens: issued by the identity endpoint, checked by every other endpoint.

Tokens are opaque random strings (not JWTs): nothing in the Azure SDKs decodes a managed-identity
token, so the emulator only has to remember who it issued each one for (audience) and until when
(``expires_on``, wall-clock epoch seconds, because clients compare against ``time.time()``).
Each API rejects a bad token with its own 401 body, see :func:`check_bearer`.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from emulator import errors
from emulator.faults import endpoint_for_path

__all__ = [
    "ARM_AUDIENCE",
    "AUDIENCES",
    "DATAPLANE_AUDIENCE",
    "LOGS_AUDIENCE",
    "METRICS_AUDIENCE",
    "Token",
    "TokenStore",
    "check_bearer",
    "normalize_audience",
]

ARM_AUDIENCE = "https://management.azure.com"
METRICS_AUDIENCE = "https://metrics.monitor.azure.com"
LOGS_AUDIENCE = "https://api.loganalytics.io"
DATAPLANE_AUDIENCE = "https://cognitiveservices.azure.com"

#: Audiences each API accepts besides its canonical one (ARM still takes the classic RDFE id;
#: Foundry also takes the newer ai.azure.com audience).
AUDIENCES: dict[str, frozenset[str]] = {
    ARM_AUDIENCE: frozenset({ARM_AUDIENCE, "https://management.core.windows.net"}),
    METRICS_AUDIENCE: frozenset({METRICS_AUDIENCE}),
    LOGS_AUDIENCE: frozenset({LOGS_AUDIENCE, "https://api.loganalytics.azure.com"}),
    DATAPLANE_AUDIENCE: frozenset({DATAPLANE_AUDIENCE, "https://ai.azure.com"}),
}


def normalize_audience(resource: str) -> str:
    """``https://x/.default`` / ``https://x/`` → ``https://x`` (lower-case)."""
    r = resource.strip().lower().removesuffix("/.default")
    return r.rstrip("/")


@dataclass(frozen=True)
class Token:
    value: str
    audience: str
    expires_on: int
    issued_at: int

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_on


class TokenStore:
    """The tokens the identity endpoint has handed out."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._lock = threading.Lock()

    def issue(self, audience: str, lifetime_s: int) -> Token:
        now = int(time.time())
        tok = Token(
            value="fwemu." + secrets.token_urlsafe(32),
            audience=normalize_audience(audience),
            expires_on=now + int(lifetime_s),
            issued_at=now,
        )
        with self._lock:
            if len(self._tokens) > 10_000:  # forget long-dead tokens
                self._tokens = {
                    k: t for k, t in self._tokens.items() if t.expires_on > now - 86_400
                }
            self._tokens[tok.value] = tok
        return tok

    def lookup(self, value: str) -> Token | None:
        with self._lock:
            return self._tokens.get(value)

    def expire_all(self) -> None:
        """Make every issued token expired now (tests of the refresh path)."""
        now = int(time.time())
        with self._lock:
            self._tokens = {
                k: Token(t.value, t.audience, min(t.expires_on, now - 1), t.issued_at)
                for k, t in self._tokens.items()
            }


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%m/%d/%Y %H:%M:%S")


def _reject(api: str, audience: str, reason: str, detail: str = "") -> Response:
    """The 401 for ``reason`` (missing|format|invalid|audience|expired) in ``api``'s shape."""
    if api == "dataplane":
        # Azure AI services gateway wording; it does not say which of the checks failed.
        return errors.cognitive_error(
            401,
            f"Access token is missing, invalid, audience is incorrect ({audience}), "
            "or have expired.",
        )
    if api == "logs":
        if reason == "missing":
            return errors.logs_error(
                401, "AuthorizationRequiredError", "Valid authentication was not provided"
            )
        inner = {"expired": "TokenExpiredError", "audience": "InvalidAudienceError"}
        return errors.logs_error(
            401,
            "InvalidTokenError",
            "The provided authentication is not valid for this resource",
            inner_code=inner.get(reason, "InvalidTokenError"),
            inner_message=detail or None,
        )
    codes = {
        "missing": (
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        ),
        "format": (
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is provided in an invalid format.",
        ),
        "invalid": ("InvalidAuthenticationToken", "The access token is invalid."),
        "audience": (
            "InvalidAuthenticationTokenAudience",
            f"The access token has been obtained for wrong audience or resource '{detail}'. "
            f"It should exactly match with one of the allowed audiences '{audience}/'.",
        ),
        "expired": ("ExpiredAuthenticationToken", detail or "The access token has expired."),
    }
    code, message = codes[reason]
    challenge = (
        'Bearer authorization_uri="https://login.microsoftonline.com/common", '
        f'error="invalid_token", error_description="{message}"'
    )
    return errors.arm_error(401, code, message, headers={"WWW-Authenticate": challenge})


def check_bearer(
    request: Request, audience: str, *, api: str = "arm", endpoint: str | None = None
) -> Response | None:
    """Validate ``Authorization: Bearer …`` for ``audience``; the 401 to send, or None if good.

    An ``expired_token`` fault for this endpoint makes a good token count as expired once.
    """
    state = request.app.state.emulator
    header = request.headers.get("authorization")
    if not header:
        return _reject(api, audience, "missing")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return _reject(api, audience, "format")
    token = state.tokens.lookup(value.strip())
    if token is None:
        return _reject(api, audience, "invalid")
    wanted = normalize_audience(audience)
    if token.audience not in AUDIENCES.get(wanted, frozenset({wanted})):
        return _reject(api, wanted, "audience", token.audience)
    now = time.time()
    forced = state.faults.take(
        endpoint or endpoint_for_path(request.url.path),
        path=request.url.path,
        kinds=("expired_token",),
    )
    if forced is not None or token.expired(now):
        expiry = min(token.expires_on, int(now) - 1) if forced else token.expires_on
        return _reject(
            api,
            wanted,
            "expired",
            f"The access token expiry UTC time '{_utc(expiry)}' is earlier than current UTC time "
            f"'{_utc(now)}'.",
        )
    return None

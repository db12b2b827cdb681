"""App Service managed identity endpoint (``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``).

Why App Service: with those two variables set (and no ``IDENTITY_SERVER_THUMBPRINT``),
azure-identity's ``ManagedIdentityCredential`` — and so ``DefaultAzureCredential`` — picks
``AppServiceCredential`` without an IMDS probe (azure/identity/_credentials/managed_identity.py).
That delegates to MSAL's ``_obtain_token_on_app_service`` (msal/managed_identity.py), which sends
``GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=…`` with ``X-IDENTITY-HEADER`` and reads
``access_token`` plus ``expires_on`` (epoch seconds, as a string in App Service's answer); any
other body becomes ``invalid_scope`` with its ``statusCode``/``message``. MSAL treats a cached
token with under 5 minutes left as expired, so a short ``token_lifetime_s`` forces refreshes.
The request goes through azure-core's requests transport, which trusts ``REQUESTS_CA_BUNDLE``.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from emulator import errors
from emulator.faults import finish, intercept
from emulator.world import stable_uuid

__all__ = ["API_VERSION", "routes"]

API_VERSION = "2019-08-01"


async def token(request: Request) -> Response:
    state = request.app.state.emulator
    header = request.headers.get("x-identity-header")
    if header is None:
        return errors.identity_error(400, "Bad Request: X-IDENTITY-HEADER header is missing")
    if not hmac.compare_digest(header.encode(), state.identity_header.encode()):
        return errors.identity_error(401, "Unauthorized: X-IDENTITY-HEADER is invalid")
    api_version = request.query_params.get("api-version")
    if api_version != API_VERSION:
        return errors.identity_error(
            400, f"Bad Request: api-version '{api_version}' is not supported, use {API_VERSION}"
        )
    resource = request.query_params.get("resource", "")
    if not resource.startswith(("https://", "api://")):
        return errors.identity_error(
            400, "Bad Request: the 'resource' parameter must be an absolute URI"
        )
    answer, rule = await intercept(request, "token")
    if answer is not None:
        return answer
    tok = state.tokens.issue(resource, state.token_lifetime_s)
    body = {
        "access_token": tok.value,
        "expires_on": str(tok.expires_on),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": stable_uuid(state.world.seed, "managed-identity"),
    }
    return finish(rule, JSONResponse(body))


def routes() -> list[BaseRoute]:
    return [Route("/msi/token", token, methods=["GET"])]

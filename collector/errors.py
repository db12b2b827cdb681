"""Azure failures turned into one line that names the resource and the fix (DESIGN §8)."""

from __future__ import annotations

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import CredentialUnavailableError

#: The least-privilege role each source needs, named in 403 messages.
ROLE_FOR_SOURCE = {
    "discovery": "Reader on the Foundry resources (and Monitoring Reader for diagnostic settings)",
    "metrics": "Monitoring Reader on the subscription",
    "logs": "Log Analytics Reader on the workspace",
    "live search": "Log Analytics Reader on the workspace",
    "costs": "Cost Management Reader on the scope",
}


def _azure_request_id(exc: HttpResponseError) -> str:
    response = getattr(exc, "response", None)
    if response is None:
        return ""
    rid = response.headers.get("x-ms-request-id") or response.headers.get("request-id") or ""
    return f" (x-ms-request-id {rid})" if rid else ""


def describe_azure_error(exc: BaseException, *, source: str, scope: str) -> str:
    """One line: what failed, where, and what to do. Never includes tokens or keys."""
    where = f"{source} on {scope}"
    if isinstance(exc, CredentialUnavailableError):
        return (
            f"{where}: no Azure credential available (az login, AZURE_CLIENT_ID/AZURE_TENANT_ID/"
            "AZURE_CLIENT_SECRET, or a managed identity)"
        )
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) in (
        None,
        401,
    ):
        rid = _azure_request_id(exc)
        return f"{where}: 401 unauthorized: the credential or token was refused{rid}"
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        code = getattr(exc.error, "code", None) or exc.reason or ""
        rid = _azure_request_id(exc)
        if status == 401:
            return f"{where}: 401 unauthorized ({code}): check the credential{rid}"
        if status == 403:
            role = ROLE_FOR_SOURCE.get(source, "the reader role for this API")
            return f"{where}: 403 forbidden ({code}): grant {role}{rid}"
        if status == 404:
            hint = "check the subscription, resource or workspace id"
            return f"{where}: 404 not found ({code}): {hint}{rid}"
        if status in (429, 529):
            return (
                f"{where}: {status} throttled ({code}); retries exhausted, next cycle retries{rid}"
            )
        if status is not None and status >= 500:
            return f"{where}: Azure answered {status} ({code}); next cycle retries{rid}"
        message = (exc.message or "").strip().splitlines()[0] if exc.message else ""
        if status is None:  # no HTTP answer at all, e.g. every credential in a chain failed
            if "credential" in message.lower():
                return f"{where}: no Azure credential could get a token: {message}"[:500]
            return f"{where}: {message or type(exc).__name__}"[:500]
        return f"{where}: HTTP {status} ({code}) {message}{rid}".rstrip()
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{where}: cannot reach Azure: {first}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{where}: {type(exc).__name__}: {first}".rstrip(": ")

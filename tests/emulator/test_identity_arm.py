"""Managed identity and ARM discovery through the real azure-identity and azure-mgmt-* SDKs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError
from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient
from azure.mgmt.loganalytics import LogAnalyticsManagementClient
from azure.mgmt.monitor import MonitorManagementClient

from emulator.auth import ARM_AUDIENCE, DATAPLANE_AUDIENCE, LOGS_AUDIENCE, METRICS_AUDIENCE
from emulator.server import EmulatorServer

ARM_SCOPE = "https://management.azure.com/.default"


def _cs_client(
    emulator: EmulatorServer, credential, sub: str, **kw
) -> CognitiveServicesManagementClient:
    return CognitiveServicesManagementClient(
        credential,
        sub,
        base_url=emulator.base_url,
        credential_scopes=kw.pop("credential_scopes", [ARM_SCOPE]),
        **kw,
    )


@pytest.fixture
def http(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, verify=emulator.ssl_context(), timeout=10) as c:
        yield c


def _bearer(credential, audience: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential.get_token(audience + '/.default').token}"}


# ------------------------------------------------------------------------------ identity
@pytest.mark.parametrize(
    "audience", [ARM_AUDIENCE, METRICS_AUDIENCE, LOGS_AUDIENCE, DATAPLANE_AUDIENCE]
)
def test_default_credential_gets_tokens_for_every_audience(
    emulator: EmulatorServer, credential, audience: str
) -> None:
    tok = credential.get_token(audience + "/.default")
    stored = emulator.state.tokens.lookup(tok.token)
    assert stored is not None and stored.audience == audience
    assert abs(tok.expires_on - stored.expires_on) <= 2
    assert tok.expires_on > time.time() + 3000


def test_identity_endpoint_checks_the_secret_header(emulator: EmulatorServer, http) -> None:
    params = {"api-version": "2019-08-01", "resource": ARM_AUDIENCE}
    missing = http.get("/msi/token", params=params)
    assert missing.status_code == 400 and "statusCode" in missing.json()
    wrong = http.get("/msi/token", params=params, headers={"X-IDENTITY-HEADER": "nope"})
    assert wrong.status_code == 401 and wrong.json()["statusCode"] == 401
    good = http.get(
        "/msi/token", params=params, headers={"X-IDENTITY-HEADER": emulator.state.identity_header}
    )
    body = good.json()
    assert good.status_code == 200 and body["token_type"] == "Bearer"
    assert body["resource"] == ARM_AUDIENCE and body["expires_on"].isdigit()
    bad_version = http.get(
        "/msi/token",
        params={**params, "api-version": "2017-09-01"},
        headers={"X-IDENTITY-HEADER": emulator.state.identity_header},
    )
    assert bad_version.status_code == 400


# ------------------------------------------------------------------------------ accounts
def test_accounts_and_deployments_list_across_pages(emulator: EmulatorServer, credential) -> None:
    world = emulator.world
    emulator.state.arm_page_size = 1
    try:
        seen = {}
        for sub in world.subscriptions:
            client = _cs_client(emulator, credential, sub)
            for acct in client.accounts.list():
                assert acct.kind == "AIServices"
                assert acct.properties.provisioning_state == "Succeeded"
                rg = acct.id.split("/")[4]
                seen[acct.name] = [d.name for d in client.deployments.list(rg, acct.name)]
    finally:
        emulator.state.arm_page_size = 2
    assert set(seen) == {r.name for r in world.resources}
    now = world.now()
    for res in world.resources:
        expected = [d.name for d in world.deployments_of(res) if d.active_at(now)]
        assert seen[res.name] == expected


def test_list_pages_carry_next_link(emulator: EmulatorServer, credential, http) -> None:
    res = emulator.world.resources[0]
    url = f"{res.arm_id}/deployments"
    first = http.get(
        url, params={"api-version": "2025-09-01"}, headers=_bearer(credential, ARM_AUDIENCE)
    )
    body = first.json()
    assert first.status_code == 200 and len(body["value"]) == emulator.state.arm_page_size
    assert body["nextLink"].startswith(emulator.base_url)
    second = http.get(body["nextLink"], headers=_bearer(credential, ARM_AUDIENCE))
    assert second.status_code == 200 and second.json()["value"]


def test_deployment_shape_and_deleted_deployment(emulator: EmulatorServer, credential) -> None:
    world = emulator.world
    gone = world.deleted_deployment
    assert gone is not None
    res = gone.resource
    client = _cs_client(emulator, credential, res.subscription_id)
    live = client.deployments.get(res.resource_group, res.name, "claude-sonnet-4-5")
    assert live.properties.model.format == "Anthropic"
    assert live.properties.model.name == "claude-sonnet-4-5"
    assert live.properties.model.version == "20250929"
    assert live.sku.name == "GlobalStandard" and live.sku.capacity > 0
    assert live.properties.provisioning_state == "Succeeded"
    assert live.system_data.created_at is not None
    names = [d.name for d in client.deployments.list(res.resource_group, res.name)]
    assert gone.name not in names
    with pytest.raises(ResourceNotFoundError):
        client.deployments.get(res.resource_group, res.name, gone.name)
    with pytest.raises(ResourceNotFoundError):
        client.accounts.get(res.resource_group, "no-such-account")


def test_arm_ids_are_case_insensitive(emulator: EmulatorServer, credential, http) -> None:
    res = emulator.world.resources[1]
    shouting = res.arm_id.upper().replace("/SUBSCRIPTIONS/", "/subscriptions/", 1)
    r = http.get(
        shouting, params={"api-version": "2025-09-01"}, headers=_bearer(credential, ARM_AUDIENCE)
    )
    assert r.status_code == 200 and r.json()["name"] == res.name


def test_arm_errors(emulator: EmulatorServer, credential, http) -> None:
    auth = _bearer(credential, ARM_AUDIENCE)
    res = emulator.world.resources[0]
    no_version = http.get(res.arm_id, headers=auth)
    assert no_version.status_code == 400
    assert no_version.json()["error"]["code"] == "MissingApiVersionParameter"
    unknown = http.get(f"{res.arm_id}/whatever", params={"api-version": "2025-09-01"}, headers=auth)
    assert unknown.status_code == 404 and "code" in unknown.json()["error"]
    bad_sub = http.get(
        "/subscriptions/00000000-0000-0000-0000-000000000000/providers/"
        "Microsoft.CognitiveServices/accounts",
        params={"api-version": "2025-09-01"},
        headers=auth,
    )
    assert bad_sub.json()["error"]["code"] == "SubscriptionNotFound"
    nowhere = http.get("/no/such/api", headers=auth)
    assert nowhere.status_code == 404 and "error" in nowhere.json()


# ------------------------------------------------------------------------------ monitor / LA
def test_diagnostic_settings_point_at_the_workspace(emulator: EmulatorServer, credential) -> None:
    world = emulator.world
    for res in world.resources:
        client = MonitorManagementClient(
            credential,
            res.subscription_id,
            base_url=emulator.base_url,
            credential_scopes=[ARM_SCOPE],
        )
        (setting,) = list(client.diagnostic_settings.list(res.arm_id))
        assert setting.workspace_id == res.workspace.arm_id.lower()
        enabled = {log.category or log.category_group for log in setting.logs if log.enabled}
        assert enabled & {"RequestResponse", "allLogs"}
        assert client.diagnostic_settings.get(res.arm_id, setting.name).name == setting.name
        client.close()


def test_workspace_get_returns_customer_id(emulator: EmulatorServer, credential) -> None:
    for ws in emulator.world.workspaces:
        client = LogAnalyticsManagementClient(
            credential,
            ws.subscription_id,
            base_url=emulator.base_url,
            credential_scopes=[ARM_SCOPE],
        )
        got = client.workspaces.get(ws.resource_group, ws.name)
        assert got.customer_id == ws.customer_id
        assert got.id == ws.arm_id.lower()
        client.close()


# ------------------------------------------------------------------------------ token checks
def test_token_for_another_audience_is_rejected(emulator: EmulatorServer, credential, http) -> None:
    res = emulator.world.resources[0]
    r = http.get(
        res.arm_id, params={"api-version": "2025-09-01"}, headers=_bearer(credential, LOGS_AUDIENCE)
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"
    assert "WWW-Authenticate" in r.headers
    client = _cs_client(
        emulator, credential, res.subscription_id, credential_scopes=[LOGS_AUDIENCE + "/.default"]
    )
    with pytest.raises(ClientAuthenticationError):
        client.accounts.get(res.resource_group, res.name)
    garbage = http.get(
        res.arm_id, params={"api-version": "2025-09-01"}, headers={"Authorization": "Bearer x"}
    )
    assert garbage.json()["error"]["code"] == "InvalidAuthenticationToken"
    missing = http.get(res.arm_id, params={"api-version": "2025-09-01"})
    assert missing.json()["error"]["code"] == "AuthenticationFailed"


def test_expired_token_fault_then_refresh(emulator: EmulatorServer, credential, faults) -> None:
    res = emulator.world.resources[0]
    client = _cs_client(emulator, credential, res.subscription_id)
    faults.add(kind="expired_token", endpoint="arm", count=1)
    with pytest.raises(ClientAuthenticationError) as err:
        client.accounts.get(res.resource_group, res.name)
    assert err.value.error.code == "ExpiredAuthenticationToken"
    assert client.accounts.get(res.resource_group, res.name).name == res.name


def test_really_expired_token_is_refused_and_refreshed(
    emulator: EmulatorServer, credential, http
) -> None:
    from azure.identity import ManagedIdentityCredential

    emulator.state.token_lifetime_s = 1
    try:
        fresh = ManagedIdentityCredential()
        old = fresh.get_token(ARM_SCOPE).token
        time.sleep(1.2)
        res = emulator.world.resources[0]
        r = http.get(
            res.arm_id,
            params={"api-version": "2025-09-01"},
            headers={"Authorization": f"Bearer {old}"},
        )
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "ExpiredAuthenticationToken"
        # MSAL treats a token with under 5 minutes left as expired and asks again.
        emulator.state.token_lifetime_s = 3600
        new = fresh.get_token(ARM_SCOPE).token
        assert new != old
        ok = http.get(
            res.arm_id,
            params={"api-version": "2025-09-01"},
            headers={"Authorization": f"Bearer {new}"},
        )
        assert ok.status_code == 200
    finally:
        emulator.state.token_lifetime_s = 3600

"""Fault injection: the admin API and each fault kind as a client sees it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import anthropic
import httpx
import httpx2
import pytest
from azure.core.exceptions import (
    DecodeError,
    HttpResponseError,
    IncompleteReadError,
    ServiceResponseError,
)
from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient

from emulator.faults import FaultRule, Faults, endpoint_for_path
from emulator.server import EmulatorServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

API = {"api-version": "2025-09-01"}
ARM_SCOPE = "https://management.azure.com/.default"


@pytest.fixture
def http(emulator: EmulatorServer, credential) -> Iterator[httpx.Client]:
    token = credential.get_token(ARM_SCOPE).token
    with httpx.Client(
        base_url=emulator.base_url,
        verify=emulator.ssl_context(),
        timeout=10,
        headers={"Authorization": f"Bearer {token}"},
    ) as c:
        yield c


@pytest.fixture
def account_url(emulator: EmulatorServer) -> str:
    return emulator.world.resources[0].arm_id


def _sdk(emulator: EmulatorServer, credential, **kw) -> CognitiveServicesManagementClient:
    res = emulator.world.resources[0]
    return CognitiveServicesManagementClient(
        credential,
        res.subscription_id,
        base_url=emulator.base_url,
        credential_scopes=[ARM_SCOPE],
        **kw,
    )


def test_endpoint_for_path() -> None:
    assert endpoint_for_path("/msi/token") == "token"
    assert endpoint_for_path("/metrics/eastus2/subscriptions/x/metrics:getBatch") == "metrics"
    assert endpoint_for_path("/logs/v1/workspaces/x/query") == "logs"
    assert endpoint_for_path("/foundry/r/anthropic/v1/messages") == "dataplane"
    assert endpoint_for_path("/anthropic/v1/messages") == "dataplane"
    assert endpoint_for_path("/subscriptions/s/providers/Microsoft.CostManagement/query") == "costs"
    assert (
        endpoint_for_path("/subscriptions/s/providers/Microsoft.CognitiveServices/accounts")
        == "arm"
    )


def test_rules_are_consumed_in_order_and_filtered() -> None:
    f = Faults()
    f.add(kind="error", endpoint="metrics", count=2)
    f.add(kind="throttle", endpoint="*", path_contains="/deployments")
    assert f.take("arm", path="/subscriptions/x/accounts") is None
    assert f.take("arm", path="/subscriptions/x/accounts/a/DEPLOYMENTS").kind == "throttle"
    assert f.take("metrics", kinds=("throttle",)) is None
    assert f.take("metrics").kind == "error"
    assert f.take("metrics").kind == "error"
    assert f.take("metrics") is None
    unlimited = f.add(kind="slow", count=None)
    for _ in range(5):
        assert f.take("logs") is unlimited
    assert unlimited.fired == 5
    with pytest.raises(ValueError):
        FaultRule(kind="explode")
    with pytest.raises(ValueError):
        FaultRule(kind="error", endpoint="nowhere")


def test_admin_api(emulator: EmulatorServer, faults) -> None:
    with httpx.Client(base_url=emulator.base_url, verify=emulator.ssl_context()) as c:
        created = c.post(
            "/_emulator/faults",
            json={"kind": "throttle", "endpoint": "arm", "count": 3, "retry_after_s": 2},
        )
        assert created.status_code == 201 and created.json()["kind"] == "throttle"
        listed = c.get("/_emulator/faults").json()["rules"]
        assert [r["id"] for r in listed] == [created.json()["id"]]
        bad = c.post("/_emulator/faults", json={"kind": "nope"})
        assert bad.status_code == 400 and "throttle" in bad.json()["kinds"]
        assert c.post("/_emulator/faults", json={"kind": "error", "colour": 1}).status_code == 400
        assert c.delete("/_emulator/faults").status_code == 204
        assert c.get("/_emulator/faults").json()["rules"] == []
        health = c.get("/_emulator/health").json()
        assert health["status"] == "ok" and health["seed"] == 42
        assert c.get("/_emulator/keys").json() == emulator.state.api_keys


def test_throttle_arm(emulator, credential, http, account_url, faults) -> None:
    faults.add(kind="throttle", endpoint="arm", retry_after_s=4)
    r = http.get(account_url, params=API)
    assert r.status_code == 429 and r.headers["Retry-After"] == "4"
    assert r.json()["error"]["code"] == "SubscriptionRequestsThrottled"
    # azure-core retries a 429 after Retry-After; with a 0 s wait the SDK call just succeeds.
    faults.add(kind="throttle", endpoint="arm", retry_after_s=0)
    res = emulator.world.resources[0]
    assert _sdk(emulator, credential).accounts.get(res.resource_group, res.name).name == res.name
    assert not faults.rules()


def test_throttle_shapes_per_api(emulator: EmulatorServer, faults) -> None:
    with httpx.Client(base_url=emulator.base_url, verify=emulator.ssl_context()) as c:
        faults.add(kind="throttle", endpoint="token", retry_after_s=1)
        r = c.get(
            "/msi/token",
            params={"api-version": "2019-08-01", "resource": "https://management.azure.com"},
            headers={"X-IDENTITY-HEADER": emulator.state.identity_header},
        )
        assert r.status_code == 429 and r.json()["statusCode"] == 429


def test_error_fault(emulator, credential, http, account_url, faults) -> None:
    faults.add(kind="error", endpoint="arm", status=503)
    r = http.get(account_url, params=API)
    assert r.status_code == 503 and r.json()["error"]["code"] == "ServiceUnavailable"
    faults.add(kind="error", endpoint="arm", status=500, count=None)
    res = emulator.world.resources[0]
    with pytest.raises(HttpResponseError) as err:
        _sdk(emulator, credential, retry_total=0).accounts.get(res.resource_group, res.name)
    assert err.value.status_code == 500


def test_slow_and_timeout(http, account_url, faults) -> None:
    faults.add(kind="slow", endpoint="arm", delay_s=0.6)
    t0 = time.perf_counter()
    assert http.get(account_url, params=API).status_code == 200
    assert time.perf_counter() - t0 >= 0.6
    faults.add(kind="timeout", endpoint="arm", delay_s=5)
    with pytest.raises(httpx.ReadTimeout):
        http.get(account_url, params=API, timeout=0.5)


def test_malformed(emulator, credential, http, account_url, faults) -> None:
    faults.add(kind="malformed", endpoint="arm")
    r = http.get(account_url, params=API)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        r.json()
    faults.add(kind="malformed", endpoint="arm")
    res = emulator.world.resources[0]
    with pytest.raises(DecodeError):
        _sdk(emulator, credential).accounts.get(res.resource_group, res.name)


def test_truncated(emulator, credential, http, account_url, faults) -> None:
    faults.add(kind="truncated", endpoint="arm")
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(account_url, params=API)
    faults.add(kind="truncated", endpoint="arm", count=None)
    res = emulator.world.resources[0]
    with pytest.raises((ServiceResponseError, IncompleteReadError)):
        _sdk(emulator, credential, retry_total=0).accounts.get(res.resource_group, res.name)


def test_truncated_stream(emulator: EmulatorServer, faults) -> None:
    res = emulator.world.resources[0].name
    client = anthropic.AnthropicFoundry(
        api_key=emulator.api_key(res),
        base_url=emulator.dataplane_url(res),
        http_client=httpx2.Client(verify=emulator.ssl_context()),
        max_retries=0,
    )
    faults.add(kind="truncated", endpoint="dataplane")
    # The SDK lets the transport error of a broken stream through unwrapped.
    with (
        pytest.raises((anthropic.APIError, httpx2.RemoteProtocolError)),
        client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=200,
            messages=[{"role": "user", "content": "tell me a long story"}],
        ) as s,
    ):
        s.get_final_message()


def test_nextlink_break(emulator: EmulatorServer, http, faults) -> None:
    res = emulator.world.resources[0]
    faults.add(kind="nextlink_break", endpoint="arm")
    first = http.get(f"{res.arm_id}/deployments", params=API)
    assert first.status_code == 200  # first pages are unaffected
    next_link = first.json()["nextLink"]
    assert http.get(next_link).status_code == 500
    assert http.get(next_link).status_code == 200  # count=1: the retry goes through


def test_expired_token_fault_kind_is_per_endpoint(emulator, http, account_url, faults) -> None:
    faults.add(kind="expired_token", endpoint="logs")
    assert http.get(account_url, params=API).status_code == 200
    assert len(faults.rules()) == 1
    faults.clear()
    faults.add(kind="expired_token", endpoint="arm")
    r = http.get(account_url, params=API)
    assert r.status_code == 401 and r.json()["error"]["code"] == "ExpiredAuthenticationToken"

"""The Claude data plane through the real anthropic SDK (AnthropicFoundry and its async twin)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import anthropic
import httpx2
import pytest
from azure.identity import get_bearer_token_provider

from emulator.auth import ARM_AUDIENCE, DATAPLANE_AUDIENCE
from emulator.server import EmulatorServer
from emulator.world import floor_minute

# The SDK warns that these (real) model names are deprecated; irrelevant here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MSG = [{"role": "user", "content": "How is the weather?"}]


@pytest.fixture(scope="module")
def resource(emulator: EmulatorServer) -> str:
    return emulator.world.resources[0].name


@pytest.fixture(scope="module")
def client(emulator: EmulatorServer, resource: str) -> Iterator[anthropic.AnthropicFoundry]:
    c = anthropic.AnthropicFoundry(
        api_key=emulator.api_key(resource),
        base_url=emulator.dataplane_url(resource),
        http_client=httpx2.Client(verify=emulator.ssl_context()),
        max_retries=0,
    )
    yield c
    c.close()


def _live(emulator: EmulatorServer, apim_id: str):
    return [r for r in emulator.world.live_records() if r.correlation_id == apim_id]


def test_create_with_api_key(emulator: EmulatorServer, client, resource: str) -> None:
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=200, messages=MSG
    )
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and "weather" in msg.content[0].text
    assert msg.stop_reason == "end_turn"
    u = msg.usage
    assert u.input_tokens > 0 and u.output_tokens > 0
    assert u.cache_creation_input_tokens == 0 and u.cache_read_input_tokens == 0
    assert u.cache_creation.ephemeral_5m_input_tokens == 0
    rid, apim = raw.headers["request-id"], raw.headers["apim-request-id"]
    assert rid.startswith("req_")
    uuid.UUID(apim)
    assert not [h for h in raw.headers if h.lower().startswith("anthropic-ratelimit")]
    # The call is part of the world now: metrics and logs will count it.
    (rec,) = _live(emulator, apim)
    assert rec.request_id == rid and rec.status == 200 and not rec.stream
    assert rec.input_tokens == u.input_tokens and rec.output_tokens == u.output_tokens
    dep = emulator.world.deployment(resource, "claude-sonnet-4-5")
    assert rec in emulator.world.requests_in_minute(dep, floor_minute(rec.time))
    again = client.messages.create(model="claude-sonnet-4-5", max_tokens=200, messages=MSG)
    assert again.content[0].text == msg.content[0].text  # canned and deterministic


def test_max_tokens_caps_the_reply(client) -> None:
    msg = client.messages.create(model="claude-haiku-4-5", max_tokens=3, messages=MSG)
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 3


def test_streaming(emulator: EmulatorServer, client) -> None:
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=300, messages=MSG) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
        apim = s.response.headers["apim-request-id"]
    assert text == final.content[0].text and "weather" in text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 1
    types = []
    raw = client.messages.create(
        model="claude-haiku-4-5", max_tokens=300, messages=MSG, stream=True
    )
    for event in raw:
        types.append(event.type)
    assert types[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    (rec,) = _live(emulator, apim)
    assert rec.stream and rec.ttft_ms is not None and rec.ttft_ms <= rec.duration_ms


def test_async_client_and_stream(emulator: EmulatorServer, resource: str) -> None:
    async def run() -> tuple[str, str]:
        c = anthropic.AsyncAnthropicFoundry(
            api_key=emulator.api_key(resource),
            base_url=emulator.dataplane_url(resource),
            http_client=httpx2.AsyncClient(verify=emulator.ssl_context()),
            max_retries=0,
        )
        async with c:
            msg = await c.messages.create(model="claude-opus-4-5", max_tokens=100, messages=MSG)
            async with c.messages.stream(
                model="claude-opus-4-5", max_tokens=100, messages=MSG
            ) as s:
                final = await s.get_final_message()
        return msg.content[0].text, final.content[0].text

    a, b = asyncio.run(run())
    assert a == b


def test_azure_ad_token_provider(emulator: EmulatorServer, credential, resource: str) -> None:
    for scope in (DATAPLANE_AUDIENCE + "/.default", "https://ai.azure.com/.default"):
        c = anthropic.AnthropicFoundry(
            azure_ad_token_provider=get_bearer_token_provider(credential, scope),
            base_url=emulator.dataplane_url(resource),
            http_client=httpx2.Client(verify=emulator.ssl_context()),
            max_retries=0,
        )
        assert c.messages.create(model="claude-opus-4-1", max_tokens=50, messages=MSG).usage
    wrong = anthropic.AnthropicFoundry(
        azure_ad_token_provider=get_bearer_token_provider(credential, ARM_AUDIENCE + "/.default"),
        base_url=emulator.dataplane_url(resource),
        http_client=httpx2.Client(verify=emulator.ssl_context()),
        max_retries=0,
    )
    with pytest.raises(anthropic.AuthenticationError) as err:
        wrong.messages.create(model="claude-opus-4-1", max_tokens=50, messages=MSG)
    assert "audience" in err.value.body["error"]["message"]


def test_host_based_addressing(emulator: EmulatorServer, resource: str) -> None:
    with httpx2.Client(verify=emulator.ssl_context()) as http:
        r = http.post(
            f"{emulator.base_url}/anthropic/v1/messages",
            headers={
                "Host": f"{resource}.services.ai.azure.com",
                "api-key": emulator.api_key(resource),
                "anthropic-version": "2023-06-01",
            },
            json={"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": MSG},
        )
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] > 0


def test_errors(emulator: EmulatorServer, client, resource: str) -> None:
    bad_key = client.with_options(api_key="0" * 32)
    with pytest.raises(anthropic.AuthenticationError) as e401:
        bad_key.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSG)
    assert e401.value.body["error"]["code"] == "401"
    # Azure logs rejected calls too: the 401 is in the world with its apim id.
    (rec,) = _live(emulator, e401.value.response.headers["apim-request-id"])
    assert rec.status == 401 and rec.input_tokens == 0

    with pytest.raises(anthropic.NotFoundError) as e404:
        client.messages.create(model="gpt-4o", max_tokens=10, messages=MSG)
    assert e404.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": e404.value.body["error"]["message"]},
    }
    gone = emulator.world.deleted_deployment
    other = client.with_options(
        api_key=emulator.api_key(gone.resource.name),
        base_url=emulator.dataplane_url(gone.resource.name),
    )
    with pytest.raises(anthropic.NotFoundError):
        other.messages.create(model=gone.name, max_tokens=10, messages=MSG)

    with pytest.raises(anthropic.BadRequestError) as e400:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=0, messages=MSG)
    assert e400.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[])


def test_fault_statuses(client, faults) -> None:
    faults.add(kind="throttle", endpoint="dataplane", retry_after_s=7)
    with pytest.raises(anthropic.RateLimitError) as e429:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSG)
    assert e429.value.response.headers["retry-after"] == "7"
    assert e429.value.body["error"]["type"] == "rate_limit_error"

    faults.add(kind="error", endpoint="dataplane", status=500)
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSG)

    faults.add(kind="error", endpoint="dataplane", status=529)
    with pytest.raises(anthropic.APIStatusError) as e529:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSG)
    assert e529.value.status_code == 529
    assert e529.value.body["error"]["type"] == "overloaded_error"

    faults.add(kind="error", endpoint="dataplane", status=403)
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSG)


def test_sdk_retries_a_throttled_call(emulator: EmulatorServer, client, faults) -> None:
    faults.add(kind="throttle", endpoint="dataplane", retry_after_s=0)
    retrying = client.with_options(max_retries=2)
    assert retrying.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSG).id
    assert not faults.rules()


def test_expired_bearer_token_on_dataplane(emulator, credential, resource: str, faults) -> None:
    c = anthropic.AnthropicFoundry(
        azure_ad_token_provider=get_bearer_token_provider(
            credential, DATAPLANE_AUDIENCE + "/.default"
        ),
        base_url=emulator.dataplane_url(resource),
        http_client=httpx2.Client(verify=emulator.ssl_context()),
        max_retries=0,
    )
    faults.add(kind="expired_token", endpoint="dataplane")
    with pytest.raises(anthropic.AuthenticationError):
        c.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSG)
    assert c.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSG).id


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "v1/models"),
        ("POST", "v1/messages/batches"),
        ("GET", "v1/organizations/usage_report/messages"),
    ],
)
def test_unsupported_endpoints_are_404(
    emulator: EmulatorServer, resource: str, method, path
) -> None:
    with httpx2.Client(verify=emulator.ssl_context()) as http:
        r = http.request(
            method,
            emulator.dataplane_url(resource) + path,
            headers={"x-api-key": emulator.api_key(resource)},
        )
    assert r.status_code == 404
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "not_found_error"


def test_prompt_cache_write_then_read(emulator: EmulatorServer, client) -> None:
    system = [
        {
            "type": "text",
            "text": "You are a meticulous assistant. " * 200 + uuid.uuid4().hex,
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    first = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=50, system=system, messages=MSG
    )
    second = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=50, system=system, messages=MSG
    )
    written = first.usage.cache_creation.ephemeral_1h_input_tokens
    assert written >= 1024 and first.usage.cache_creation_input_tokens == written
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == written
    assert second.usage.cache_creation_input_tokens == 0
    recs = [r for r in emulator.world.live_records() if r.cache_write_1h_tokens == written]
    assert recs

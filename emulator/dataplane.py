"""Foundry data plane for Claude: ``POST …/anthropic/v1/messages`` (JSON and SSE).

Two addressings, same handler: ``/foundry/{resource}/anthropic/v1/messages`` (what a client gets
with ``AnthropicFoundry(base_url=f"{emulator}/foundry/{resource}/anthropic/")``) and
``/anthropic/v1/messages`` with ``Host: {resource}.services.ai.azure.com`` (the real host name;
the SDK builds ``https://{resource}.services.ai.azure.com/anthropic/`` from ``resource=``,
anthropic/lib/foundry.py).

Modelled behaviour and sources:
- Auth (anthropic/lib/foundry.py sends ``x-api-key`` and ``api-key`` for keys, or
  ``Authorization: Bearer`` from ``azure_ad_token_provider``): a key must be the resource's key
  (``EmulatorState.api_keys[resource]``); a bearer token needs the Cognitive Services (or
  ``https://ai.azure.com``) audience. Failures are the Azure AI services gateway's 401
  ``{"error": {"code": "401", "message": …}}``, not Anthropic's shape: the gateway answers before
  the model does.
- Body checks (Anthropic Messages API): ``model`` must name an active deployment of that resource
  (else 404 ``not_found_error``), ``max_tokens`` an int > 0, ``messages`` a non-empty list;
  others are 400 ``invalid_request_error`` in ``{"type": "error", "error": {…}}``.
- Replies are canned and deterministic, with a real ``usage`` (types/usage.py): input tokens
  estimated at 4 characters a token; prompt caching honours ``cache_control`` (``ttl`` 5m/1h,
  1024-token minimum): a first call writes the prefix (``cache_creation``), repeats within the
  TTL read it.
- Streaming emits message_start, content_block_start, ping, content_block_delta…,
  content_block_stop, message_delta (cumulative usage), message_stop — the order
  anthropic/lib/streaming/_messages.py ``accumulate_event`` requires.
- Headers: ``request-id`` (``req_…``) and ``apim-request-id`` (uuid); no
  ``anthropic-ratelimit-*`` headers (Foundry does not send them).
- ``/anthropic/v1/models``, ``/messages/batches``, ``/organizations/*`` and anything else under
  ``anthropic/`` → 404 ``not_found_error`` (the Foundry client disables those resources too).
- Every answered call whose deployment is known — success, 400, 401, 403, 429, 5xx — becomes a
  :class:`~emulator.world.RequestRecord` (``correlation_id`` = ``apim-request-id``), so it shows up
  in metrics, logs and costs. Azure logs rejected-auth calls as well (the world's history holds
  401s); a call naming no existing deployment has no deployment dimension and is not recorded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Send

from emulator import errors
from emulator.auth import DATAPLANE_AUDIENCE, check_bearer
from emulator.faults import FaultRule, finish, intercept
from emulator.state import EmulatorState
from emulator.world import API_NAME, OPERATION_NAME, Deployment, RequestRecord, Resource

__all__ = ["routes"]

_HOST_SUFFIX = ".services.ai.azure.com"
_CACHE_MIN_TOKENS = 1024
_TTL_S = {"5m": 300, "1h": 3600}


def _new_request_id() -> str:
    return "req_011C" + base64.b64encode(secrets.token_bytes(15), b"xZ").decode()[:20]


def _mask_ip(host: str | None) -> str:
    if not host or ":" in host:
        return "::***" if host else "0.0.0.***"
    parts = host.split(".")
    return ".".join([*parts[:3], "***"]) if len(parts) == 4 else host


def _resource_name(request: Request) -> str | None:
    if "resource" in request.path_params:
        return request.path_params["resource"]
    host = (request.headers.get("host") or "").split(":")[0].lower()
    if host.endswith(_HOST_SUFFIX):
        return host[: -len(_HOST_SUFFIX)]
    return None


@dataclass
class _Call:
    """What is known about a call so far, for its RequestRecord."""

    arrived: Any
    t0: float
    deployment: Deployment | None = None
    stream: bool = False
    request_length: int = 0
    apim_id: str = ""
    request_id: str = ""
    caller_ip: str = ""


def _record(
    state: EmulatorState,
    call: _Call,
    status: int,
    response_length: int,
    *,
    usage: dict[str, Any] | None = None,
    ttft_ms: int | None = None,
) -> None:
    if call.deployment is None:
        return
    u = usage or {}
    creation = u.get("cache_creation") or {}
    state.world.record_live(
        RequestRecord(
            time=call.arrived,
            deployment=call.deployment,
            status=status,
            duration_ms=max(1, round((time.perf_counter() - call.t0) * 1000)),
            ttft_ms=ttft_ms,
            stream=call.stream,
            input_tokens=int(u.get("input_tokens", 0)),
            output_tokens=int(u.get("output_tokens", 0)),
            cache_read_tokens=int(u.get("cache_read_input_tokens", 0)),
            cache_write_5m_tokens=int(creation.get("ephemeral_5m_input_tokens", 0)),
            cache_write_1h_tokens=int(creation.get("ephemeral_1h_input_tokens", 0)),
            correlation_id=call.apim_id,
            request_id=call.request_id,
            caller_ip=call.caller_ip,
            operation_name=OPERATION_NAME,
            api_name=API_NAME,
            request_length=call.request_length,
            response_length=response_length,
        )
    )


def _with_ids(response: Response, call: _Call, resource: Resource | None) -> Response:
    response.headers["request-id"] = call.request_id
    response.headers["apim-request-id"] = call.apim_id
    response.headers["x-request-id"] = call.apim_id
    if resource is not None:
        response.headers["x-ms-region"] = resource.location
    return response


# ------------------------------------------------------------------------------ body handling
def _blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content) if isinstance(content, list) else []


def _block_tokens(block: Any) -> int:
    if isinstance(block, str):
        return max(1, len(block) // 4)
    if not isinstance(block, dict):
        return 1
    if isinstance(block.get("text"), str):
        return max(1, len(block["text"]) // 4)
    if block.get("type") in ("image", "document"):
        return 1500
    return max(1, len(json.dumps(block)) // 4)


def _usage(state: EmulatorState, dep: Deployment, body: dict[str, Any]) -> dict[str, Any]:
    """Input-side usage, honouring ``cache_control`` breakpoints like Anthropic's prompt cache."""
    seq: list[Any] = []
    seq += _blocks(body.get("system"))
    for tool in body.get("tools") or []:
        seq.append(tool)
    for msg in body["messages"]:
        seq += _blocks(msg.get("content"))
    counts = [_block_tokens(b) for b in seq]
    total = sum(counts) + 3 + 4 * len(body["messages"])  # role/turn framing tokens
    last_bp = max(
        (i for i, b in enumerate(seq) if isinstance(b, dict) and b.get("cache_control")),
        default=None,
    )
    read = w5 = w1 = 0
    if last_bp is not None:
        prefix = sum(counts[: last_bp + 1])
        if prefix >= _CACHE_MIN_TOKENS:
            ttl = str((seq[last_bp].get("cache_control") or {}).get("ttl", "5m"))
            key_src = json.dumps([dep.resource.name, dep.name, seq[: last_bp + 1]], sort_keys=True)
            key = hashlib.sha256(key_src.encode()).hexdigest()
            now = time.time()
            if state.prompt_cache.get(key, 0) > now:
                read = prefix
            elif ttl == "1h":
                w1 = prefix
            else:
                w5 = prefix
            state.prompt_cache[key] = now + _TTL_S.get(ttl, 300)
    return {
        "input_tokens": max(1, total - read - w5 - w1),
        "cache_creation_input_tokens": w5 + w1,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
        "output_tokens": 0,
        "service_tier": "standard",
    }


def _reply(dep: Deployment, body: dict[str, Any]) -> tuple[str, int, str]:
    """Canned reply text (deterministic for the request), its token count and stop reason."""
    last = body["messages"][-1]
    text = ""
    for b in _blocks(last.get("content") if isinstance(last, dict) else None):
        if isinstance(b, dict) and isinstance(b.get("text"), str):
            text = b["text"]
    digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()
    snippet = " ".join(text.split()[:12])
    reply = (
        f"Hello from the foundry-watch emulator ({dep.name}, {dep.model_name}). "
        f'You said: "{snippet}". Reference {digest[:12]}.'
    )
    limit = body["max_tokens"]
    words = reply.split(" ")
    if len(words) > limit:
        return " ".join(words[:limit]), limit, "max_tokens"
    return reply, max(1, len(reply) // 4), "end_turn"


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Request body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    mt = body.get("max_tokens")
    if isinstance(mt, bool) or not isinstance(mt, int):
        return "max_tokens: Field required and must be an integer"
    if mt <= 0:
        return "max_tokens: must be greater than or equal to 1"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "messages: at least one message is required"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if "content" not in m:
            return f"messages.{i}.content: Field required"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    return None


# ------------------------------------------------------------------------------ auth
def _check_auth(request: Request, resource: Resource, state: EmulatorState) -> Response | None:
    key = request.headers.get("x-api-key") or request.headers.get("api-key")
    if request.headers.get("authorization") and not key:
        return check_bearer(request, DATAPLANE_AUDIENCE, api="dataplane")
    if key is None:
        return errors.cognitive_error(
            401,
            "Access denied due to missing subscription key. Make sure to include subscription "
            "key when making requests to an API.",
        )
    if not secrets.compare_digest(key.encode(), state.api_key(resource.name).encode()):
        return errors.cognitive_error(
            401,
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource.",
        )
    return None


# ------------------------------------------------------------------------------ handlers
async def messages(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    world = state.world
    call = _Call(
        arrived=world.now(),
        t0=time.perf_counter(),
        apim_id=str(uuid.uuid4()),
        request_id=_new_request_id(),
        caller_ip=_mask_ip(request.client.host if request.client else None),
    )
    name = _resource_name(request)
    resource = world.resource(name) if name else None
    if resource is None:
        resp = errors.cognitive_error(404, "Resource not found", code="404")
        return _with_ids(resp, call, None)

    raw = await request.body()
    call.request_length = len(raw)
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        call.stream = body.get("stream") is True
        if isinstance(body.get("model"), str):
            dep = world.deployment(resource, body["model"])
            if dep is not None and dep.active_at(call.arrived):
                call.deployment = dep

    denied = _check_auth(request, resource, state)
    if denied is not None:
        _record(state, call, denied.status_code, len(denied.body))
        return _with_ids(denied, call, resource)

    answer, rule = await intercept(request, "dataplane")
    if answer is not None:
        _record(state, call, answer.status_code, len(answer.body))
        return _with_ids(answer, call, resource)

    problem = (
        "The request body is not valid JSON." if body is None and raw else _validate(body or {})
    )
    if problem is not None:
        resp = errors.anthropic_error(400, problem)
        _record(state, call, 400, len(resp.body))
        return _with_ids(resp, call, resource)
    if call.deployment is None:
        resp = errors.anthropic_error(
            404,
            f"model: {body['model']} (no active deployment of that name on resource "
            f"'{resource.name}')",
        )
        return _with_ids(resp, call, resource)

    dep = call.deployment
    usage = _usage(state, dep, body)
    text, out_tokens, stop = _reply(dep, body)
    message_id = "msg_01" + secrets.token_hex(11)
    if state.dataplane_delay_s > 0:
        await asyncio.sleep(state.dataplane_delay_s)
    if call.stream:
        gen = _sse(state, call, dep, message_id, usage, text, out_tokens, stop, rule)
        resp = _SSEResponse(gen, media_type="text/event-stream; charset=utf-8")
        resp.headers["cache-control"] = "no-cache"
        return _with_ids(resp, call, resource)

    usage["output_tokens"] = out_tokens
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": dep.model_name,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }
    resp = JSONResponse(message)
    _record(state, call, 200, len(resp.body), usage=usage)
    return finish(rule, _with_ids(resp, call, resource))


#: Sentinel chunk: stop the stream here without finishing the response (connection drop).
_CUT = b""


class _SSEResponse(StreamingResponse):
    """A StreamingResponse that can end mid-body, which makes the server drop the connection."""

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.body_iterator:
            if chunk is _CUT:
                return  # no final body message: uvicorn closes the connection mid-stream
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _sse(
    state: EmulatorState,
    call: _Call,
    dep: Deployment,
    message_id: str,
    usage: dict[str, Any],
    text: str,
    out_tokens: int,
    stop: str,
    rule: FaultRule | None,
) -> AsyncIterator[bytes]:
    """The Messages streaming event sequence; records the call once the stream has ended."""
    start_usage = dict(usage, output_tokens=1)
    chunks = [text[i : i + 24] for i in range(0, len(text), 24)] or [""]
    events = [
        _event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": dep.model_name,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        ),
        _event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        _event("ping", {"type": "ping"}),
    ]
    first_delta = len(events)
    for c in chunks:
        events.append(
            _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": c},
                },
            )
        )
    final_usage = {
        "input_tokens": usage["input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "output_tokens": out_tokens,
    }
    events += [
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": final_usage,
            },
        ),
        _event("message_stop", {"type": "message_stop"}),
    ]
    truncated = rule is not None and rule.kind == "truncated"
    sent = 0
    ttft: int | None = None
    for i, ev in enumerate(events):
        if truncated and i >= len(events) // 2:
            _record(state, call, 200, sent, usage=dict(usage, output_tokens=0), ttft_ms=ttft)
            yield _CUT
            return
        if i == first_delta:
            ttft = max(1, round((time.perf_counter() - call.t0) * 1000))
        sent += len(ev)
        yield ev
    usage = dict(usage, output_tokens=out_tokens)
    _record(state, call, 200, sent, usage=usage, ttft_ms=ttft)


async def not_found(request: Request) -> Response:
    """Anthropic endpoints Foundry does not offer (models, batches, organizations, …)."""
    rid = _new_request_id()
    resp = errors.anthropic_error(404, f"Not found: {request.method} {request.url.path}")
    resp.headers["request-id"] = rid
    resp.headers["apim-request-id"] = str(uuid.uuid4())
    return resp


_ALL = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def routes() -> list[BaseRoute]:
    return [
        Route("/foundry/{resource}/anthropic/v1/messages", messages, methods=["POST"]),
        Route("/anthropic/v1/messages", messages, methods=["POST"]),
        Route("/foundry/{resource}/anthropic/{rest:path}", not_found, methods=_ALL),
        Route("/anthropic/{rest:path}", not_found, methods=_ALL),
    ]

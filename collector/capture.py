"""Client-side capture: one line in an application using ``anthropic.AnthropicFoundry``.

Why: Azure's logs know Azure's correlation id (``apim-request-id``) but not Anthropic's
``request-id`` (``req_…``), nor tokens or time to first token per request. The application sees
both ids, the ``usage`` object and when the first token arrived; this module writes exactly those
facts, per HTTP attempt, to a local JSONL spool that the collector ingests (``collector/jobs/
capture.py``) and joins to Azure's log rows on the apim id.

Usage (the SDK's documented extension point is its ``http_client``)::

    from collector import capture
    client = anthropic.AnthropicFoundry(
        resource="my-foundry", api_key=...,
        http_client=capture.instrument(httpx2.Client(), spool="/var/tmp/foundry-watch.jsonl"),
    )

``instrument`` wraps the client's transports (``httpx2`` for anthropic >= 2, ``httpx`` for older
SDKs; sync or async) and returns the same client. ``transport(inner, spool=…)`` is the same
wrapper for code that builds its client with ``transport=``. (anthropic 2.x also has
``middleware=``, but it exists only in recent versions and still hands back an unread stream, so
the transport is where both the headers and the bytes pass.)

What a record holds: wall time the attempt started, resource, deployment (the request body's
``model``), status, latency to the last byte, time to the first byte and (streams) to the first
``content_block_delta``, ``usage`` (input/output/cache tokens, from the JSON body or the SSE
``message_start``/``message_delta`` events), ``request-id``, ``apim-request-id``, region, error
type/code, retry-after, the SDK's attempt number. Never prompts, completions, headers other than
those ids, or keys: the request body is only searched for its ``"model"`` value, the response
bytes only for ``usage`` and the error type.

Never in the way: the response stream is passed through chunk by chunk (observed, not
buffered); everything the capture does is inside ``try``; records go to a bounded queue that a
background thread writes (``put_nowait``: when the queue is full the record is dropped and
counted), so a slow or broken disk neither slows nor breaks the application. The spool is
append-only JSONL, rotated at ``max_bytes`` into ``path.1 … path.{backups}``; one writer thread
per path per process; several processes may share a path (each batch is one ``O_APPEND`` write,
and a writer notices that another rotated the file).

Dependency-light by design: stdlib only at import time (the HTTP library is imported when a
client is instrumented, and it is the one the application already uses). This file can be
vendored as is.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

__all__ = ["Spool", "flush", "instrument", "spool_stats", "transport"]

#: Record format version (a reader skips versions it does not know).
VERSION = 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BACKUPS = 3
DEFAULT_QUEUE = 10_000
#: Largest batch one write carries.
_BATCH = 2_000
#: JSON bodies up to this size are kept whole (parsed whole if the cheap tail search fails).
_FULL_PARSE_MAX = 64 * 1024
#: Bytes of a JSON body's end kept for the ``usage`` search once the body is larger than this.
_TAIL_KEEP = 16 * 1024
#: An SSE line longer than this is not parsed (no usage lives in such a line).
_SSE_LINE_MAX = 256 * 1024
_HOST_SUFFIXES = (
    ".services.ai.azure.com",
    ".cognitiveservices.azure.com",
    ".openai.azure.com",
)
_PATH_RESOURCE = re.compile(r"/foundry/([^/]+)/")
#: ``"model": "<value>"`` with a string value; a quote inside JSON text is escaped, so this
#: cannot match inside a prompt, only a key of some object.
_MODEL_VALUE = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){0,256})"')
_USAGE_KEY = b'"usage"'
_SSE_MARKERS = (b'"message_start"', b'"message_delta"', b'"error"')
#: SSE data lines kept per response (message_start, message_delta, error: a handful).
_SSE_EVENTS_MAX = 16
#: Bytes the spool's buffer may hold (JSON bodies and SSE lines awaiting the writer).
DEFAULT_MAX_BUFFER_BYTES = 32 * 1024 * 1024
_DECODER = json.JSONDecoder()
_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


# ------------------------------------------------------------------------------------ spool
class Spool:
    """Append-only, rotated JSONL file written by a background thread from a bounded buffer.

    ``put`` never blocks and never raises: it appends to a ``deque`` (no lock, no syscall, no
    thread wake-up: the writer polls every ``interval`` seconds and writes what accumulated in
    one ``write``), or drops and counts the record when ``queue_size`` are already waiting.
    ``written``/``dropped``/``errors`` count records; ``last_error`` keeps the last write
    failure (one line) for diagnostics.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        queue_size: int = DEFAULT_QUEUE,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        interval: float = 0.2,
        mode: int = 0o644,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.max_bytes = max(1024, int(max_bytes))
        self.backups = max(0, int(backups))
        self.capacity = max(1, int(queue_size))
        self.max_buffer_bytes = max(0, int(max_buffer_bytes))
        self.interval = interval
        self.mode = mode
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.last_error = ""
        self._fresh_state()

    def _fresh_state(self) -> None:
        self._buffer: deque[dict[str, Any]] = deque()
        self._held = 0  # bytes of bodies/events in the buffer
        self._held_lock = threading.Lock()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._busy = False
        self._fd: int | None = None
        self._size = 0
        self._retry_at = 0.0
        self._backoff = 0.5

    # -- the application side -------------------------------------------------------------
    def put(self, record: dict[str, Any], weight: int = 0) -> bool:
        """Buffer one record (``weight``: bytes it holds for the writer); False (and counted)
        if the buffer is full."""
        if self._thread is None:
            self._start()
        buffer = self._buffer
        if len(buffer) >= self.capacity:
            self.dropped += 1
            return False
        if weight:
            with self._held_lock:
                if self._held + weight > self.max_buffer_bytes:
                    self.dropped += 1
                    return False
                self._held += weight
            record["_weight"] = weight
        buffer.append(record)
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything buffered so far is written (or dropped); False on timeout."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._wake.set()
            if not self._buffer and not self._busy:
                return True
            time.sleep(0.001)
        return False

    def close(self, timeout: float = 2.0) -> None:
        """Write what is buffered (within ``timeout``) and stop the thread."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join(timeout)
        self._thread = None
        self._stopping = False
        self._close_fd()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(
                    target=self._run, name=f"foundry-watch-spool:{self.path}", daemon=True
                )
                thread.start()
                self._thread = thread

    def _after_fork(self) -> None:
        """In a forked child the writer thread is gone: start afresh on the next ``put``."""
        self._close_fd()  # the child's copy of the parent's descriptor
        self._fresh_state()

    # -- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        buffer = self._buffer
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            self._busy = True
            try:
                while buffer:
                    batch = []
                    while buffer and len(batch) < _BATCH:
                        batch.append(buffer.popleft())
                    try:
                        self._write_batch(batch)
                    except Exception as exc:  # never let the thread die
                        self._fail(len(batch), exc)
            finally:
                self._busy = False
            if self._stopping:
                return

    def _write_batch(self, batch: list[dict[str, Any]]) -> None:
        if time.monotonic() < self._retry_at:
            self.errors += len(batch)
            released = sum(record.get("_weight", 0) for record in batch)
            with self._held_lock:
                self._held -= released
            return
        released = sum(record.pop("_weight", 0) for record in batch)
        logged = _iso(time.time())
        lines = []
        try:
            for record in batch:
                try:
                    if "_url" in record:
                        record = _finalize(record)
                    record["logged"] = logged
                    if isinstance(record.get("time"), float):
                        record["time"] = _iso(record["time"])
                    line = json.dumps(record, separators=(",", ":")) + "\n"
                except Exception as exc:  # one bad record is skipped, not the batch
                    self._fail(1, exc, backoff=False)
                    continue
                lines.append(line.encode("utf-8", "replace"))
        finally:
            if released:
                with self._held_lock:
                    self._held -= released
        done = 0
        try:
            fd = self._open()
            pending: list[bytes] = []
            pending_size = 0
            for line in lines:
                if self._size + pending_size + len(line) > self.max_bytes and (
                    self._size or pending
                ):
                    if pending:
                        self._write_bytes(fd, b"".join(pending))
                        done += len(pending)
                    self._rotate()
                    fd = self._open()
                    pending, pending_size = [], 0
                pending.append(line)
                pending_size += len(line)
            if pending:
                self._write_bytes(fd, b"".join(pending))
                self._size += pending_size
                done += len(pending)
        except OSError as exc:
            self.written += done
            self._fail(len(lines) - done, exc)
            self._close_fd()
            return
        self.written += done
        self._backoff = 0.5

    def _write_bytes(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def _open(self) -> int:
        """The file descriptor, (re)opened if absent or if the path now names another file."""
        if self._fd is not None:
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
            except OSError:
                same = False
            if same:
                return self._fd
            self._close_fd()
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.mode)
        self._fd = fd
        self._size = os.fstat(fd).st_size
        return fd

    def _rotate(self) -> None:
        self._close_fd()
        if self.backups == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        for i in range(self.backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, f"{self.path}.1")

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _fail(self, count: int, exc: BaseException, *, backoff: bool = True) -> None:
        self.errors += count
        self.last_error = (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0][:300]
        if backoff:
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)


_SPOOLS: dict[str, Spool] = {}
_SPOOLS_LOCK = threading.Lock()


def _spool_for(path: str | os.PathLike[str], **options: Any) -> Spool:
    """One spool (one writer thread) per path per process."""
    key = os.path.abspath(os.fspath(path))
    with _SPOOLS_LOCK:
        spool = _SPOOLS.get(key)
        if spool is None:
            spool = _SPOOLS[key] = Spool(key, **options)
        return spool


def spool_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Counters of this process's spool at ``path`` (written, dropped, errors, last_error)."""
    spool = _SPOOLS.get(os.path.abspath(os.fspath(path)))
    if spool is None:
        return {"written": 0, "dropped": 0, "errors": 0, "last_error": ""}
    return {
        "written": spool.written,
        "dropped": spool.dropped,
        "errors": spool.errors,
        "last_error": spool.last_error,
    }


def flush(path: str | os.PathLike[str], timeout: float = 5.0) -> bool:
    """Wait until this process's records for the spool at ``path`` are on disk (or dropped)."""
    spool = _SPOOLS.get(os.path.abspath(os.fspath(path)))
    return True if spool is None else spool.flush(timeout)


def _close_all() -> None:
    for spool in list(_SPOOLS.values()):
        with contextlib.suppress(Exception):
            spool.close(timeout=1.0)


def _reset_after_fork() -> None:
    for spool in _SPOOLS.values():
        spool._after_fork()


atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


_iso_cache: tuple[int, str] = (-1, "")


def _iso(epoch: float) -> str:
    """``2026-01-02T03:04:05.678Z``; the part up to the second is cached (records of one
    batch mostly share it; one tuple, swapped whole, so writer threads never mix halves)."""
    global _iso_cache
    second = int(epoch)
    cached = _iso_cache
    if cached[0] != second:
        cached = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        _iso_cache = cached
    return f"{cached[1]}.{int((epoch - second) * 1000):03d}Z"


# ------------------------------------------------------------------------------ one attempt
def _resource_of(url: Any, override: str | None) -> str:
    if override:
        return override
    host = str(getattr(url, "host", "") or "").lower()
    for suffix in _HOST_SUFFIXES:
        if host.endswith(suffix):
            return host[: -len(suffix)]
    match = _PATH_RESOURCE.search(str(getattr(url, "path", "") or ""))
    return match.group(1) if match else host


def _model_of(body: bytes | None) -> str:
    """The top-level ``model`` of a JSON request body without parsing the whole body."""
    if not body:
        return ""
    pos = body.find(b'"model"')
    if pos < 0:
        return ""
    if body.find(b'"model"', pos + 7) < 0 and body.startswith(b':"', pos + 7):
        # the usual case: one "model" key, written compactly ("model":"name")
        end = body.find(b'"', pos + 9, pos + 9 + 257)
        if end > 0 and body.find(b"\\", pos + 9, end) < 0:
            return body[pos + 9 : end].decode("utf-8", "replace")
    found: list[bytes] = []
    while pos >= 0:
        match = _MODEL_VALUE.match(body, pos)
        if match is not None:
            found.append(match.group(1))
            if len(found) > 1:
                break
        pos = body.find(b'"model"', pos + 7)
    if len(found) == 1:
        return _unescape(found[0])
    if not found:
        return ""
    try:  # a nested "model" key too (e.g. a tool input): read the top-level one properly
        value = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def _unescape(raw: bytes) -> str:
    if b"\\" not in raw:
        return raw.decode("utf-8", "replace")
    try:
        return json.loads(b'"' + raw + b'"')
    except ValueError:
        return raw.decode("utf-8", "replace")


def _usage_record(usage: Any) -> dict[str, int] | None:
    if not isinstance(usage, dict):
        return None
    out = {k: usage[k] for k in _USAGE_FIELDS if isinstance(usage.get(k), int)}
    creation = usage.get("cache_creation")
    if isinstance(creation, dict):
        for key in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"):
            if isinstance(creation.get(key), int):
                out[key] = creation[key]
    return out or None


class _Call:
    """One HTTP attempt on the application's side: timings and the few bytes that matter.

    Only cheap work happens here (time stamps, the request's ``model``, keeping the JSON body or
    the SSE ``message_start``/``message_delta``/``error`` data lines); headers, usage and error
    types are read by the spool's writer thread (:func:`_finalize`), off the request path.
    """

    __slots__ = ("_chunks", "_events", "_size", "_tail", "done", "kind", "record", "spool", "t0")

    def __init__(self, spool: Spool, record: dict[str, Any], t0: float) -> None:
        self.spool = spool
        self.record = record
        self.t0 = t0
        self.kind = ""  # decided by the first bytes: "json" | "json-tail" | "sse" | "other"
        self.done = False
        self._chunks: list[bytes] = []
        self._events: list[bytes] = []
        self._size = 0
        self._tail = b""

    # -- per chunk (must never raise) ------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        try:
            kind = self.kind
            if not kind:
                first = chunk.lstrip()[:1]
                if not first:
                    return
                kind = self.kind = (
                    "json" if first in b"{[" else "sse" if first in b"ed:" else "other"
                )
            if kind == "sse":
                self._feed_sse(chunk)
            elif kind == "json":
                self._chunks.append(chunk)
                self._size += len(chunk)
                if self._size > _FULL_PARSE_MAX:
                    self._chunks = [b"".join(self._chunks)[-_TAIL_KEEP:]]
                    self.kind = "json-tail"
            elif kind == "json-tail":
                self._chunks = [(self._chunks[0] + chunk)[-_TAIL_KEEP:]]
        except Exception:
            self.kind = "other"

    def _feed_sse(self, chunk: bytes) -> None:
        data = self._tail + chunk if self._tail else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._tail = data if len(data) <= _SSE_LINE_MAX else b""
            return
        self._tail = data[cut + 1 :]
        record = self.record
        if "ttft_ms" not in record and data.find(b"content_block_delta", 0, cut) >= 0:
            record["ttft_ms"] = round((time.perf_counter() - self.t0) * 1000, 3)
        # Keep the data lines of message_start, message_delta and error events; the quoted
        # type names cannot occur unescaped anywhere else (text is JSON-escaped).
        for marker in _SSE_MARKERS:
            pos = data.find(marker, 0, cut)
            while pos >= 0:
                start = data.rfind(b"\n", 0, pos) + 1
                end = data.find(b"\n", pos, cut + 1)
                if data.startswith(b"data:", start) and len(self._events) < _SSE_EVENTS_MAX:
                    self._events.append(data[start + 5 : end])
                pos = data.find(marker, end, cut)

    # -- the end ---------------------------------------------------------------------------
    def finish(self, complete: bool, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        weight = 0
        try:
            record = self.record
            record["latency_ms"] = round((time.perf_counter() - self.t0) * 1000, 3)
            record["complete"] = complete
            if error is not None:
                record["error"] = type(error).__name__
            if self._chunks:
                body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                record["_body"] = body
                record["_tail_only"] = self.kind == "json-tail"
                weight = len(body)
            elif self._events:
                record["_events"] = self._events
                weight = sum(len(e) for e in self._events)
            self.spool.put(record, weight)
        except Exception:  # the application never sees a capture failure
            pass


# ------------------------------------------------------------------- the writer's side
def _finalize(record: dict[str, Any]) -> dict[str, Any]:
    """Turn what the application thread kept into the record's fields (writer thread)."""
    headers = record.pop("_headers", None)
    request_headers = record.pop("_request_headers", None)
    url = record.pop("_url", None)
    resource = record.pop("_resource", None)
    body = record.pop("_body", None)
    tail_only = record.pop("_tail_only", False)
    events = record.pop("_events", None)
    try:
        record["resource"] = _resource_of(url, resource)
        if headers is not None:
            seen = _pick(headers, _RESPONSE_HEADERS)
            record["request_id"] = seen.get("request_id", "")
            record["apim_request_id"] = seen.get("apim_request_id", "")
            if "region" in seen:
                record["region"] = seen["region"]
            if "retry_after" in seen:
                record["retry_after"] = seen["retry_after"][:32]
            content_type = seen.get("content_type", "")
            if "text/event-stream" in content_type:
                record["stream"] = True
            elif "json" in content_type:
                record["stream"] = False
        if request_headers is not None:
            attempt = _pick(request_headers, {b"x-stainless-retry-count": "n"}).get("n")
            if attempt and attempt.isdigit():
                record["attempt"] = int(attempt)
        for payload in events or ():
            _sse_event(record, payload)
        if body is not None:
            _read_json(record, body, tail_only=tail_only)
    except Exception:
        pass
    return record


def _sse_event(record: dict[str, Any], payload: bytes) -> None:
    try:
        event = json.loads(payload)
    except ValueError:
        return
    if not isinstance(event, dict):
        return
    kind = event.get("type")
    if kind == "message_start":
        message = event.get("message") or {}
        usage = _usage_record(message.get("usage"))
        if usage:
            record["usage"] = usage
        if isinstance(message.get("model"), str):
            record["model"] = message["model"]
    elif kind == "message_delta":
        usage = _usage_record(event.get("usage"))
        if usage:
            record["usage"] = {**(record.get("usage") or {}), **usage}
    elif kind == "error":
        error = event.get("error") or {}
        record["error_type"] = str(error.get("type") or error.get("code") or "error")[:64]


def _read_json(record: dict[str, Any], body: bytes, *, tail_only: bool) -> None:
    status = record.get("status") or 0
    if status >= 400:
        if tail_only:
            return
        try:
            parsed = json.loads(body)
        except ValueError:
            return
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            kind = error.get("type") or error.get("code")
            if kind is not None:
                record["error_type"] = str(kind)[:64]
        return
    usage = _tail_usage(body)
    if usage is None and not tail_only:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            usage = _usage_record(parsed.get("usage"))
            if isinstance(parsed.get("model"), str):
                record["model"] = parsed["model"]
    if usage:
        record["usage"] = usage
    if "model" not in record and not tail_only:
        match = _MODEL_VALUE.search(body, 0, 512)
        if match is not None:
            record["model"] = _unescape(match.group(1))


def _tail_usage(body: bytes) -> dict[str, int] | None:
    """The top-level ``usage`` object found from the end (it follows ``content``)."""
    pos = body.rfind(_USAGE_KEY)
    if pos < 0:
        return None
    start = body.find(b"{", pos + len(_USAGE_KEY))
    if start < 0 or body[pos + len(_USAGE_KEY) : start].strip() != b":":
        return None
    try:
        value, _ = _DECODER.raw_decode(body[start:].decode("utf-8", "replace"))
    except ValueError:
        return None
    usage = _usage_record(value)
    return usage if usage and "input_tokens" in usage else None


_RESPONSE_HEADERS = {
    b"request-id": "request_id",
    b"apim-request-id": "apim_request_id",
    b"x-ms-region": "region",
    b"retry-after": "retry_after",
    b"content-type": "content_type",
}


def _pick(headers: Any, wanted: dict[bytes, str]) -> dict[str, str]:
    """The wanted headers in one pass (httpx/httpx2 keep ``(raw, lower, value)`` triples in
    ``_list``; ``get`` per name would scan the list once per name)."""
    found: dict[str, str] = {}
    entries = getattr(headers, "_list", None)
    if isinstance(entries, list) and (not entries or len(entries[0]) == 3):
        for _raw, lower, value in entries:
            name = wanted.get(lower)
            if name is not None and name not in found:
                found[name] = value.decode("latin-1")
        return found
    for key, name in wanted.items():
        value = headers.get(key.decode())
        if value is not None:
            found[name] = value
    return found


# ----------------------------------------------------------------- the application's side
def _begin(
    spool: Spool, resource: str | None, request: Any, response: Any, wall: float, t0: float
) -> _Call:
    """What is known when the response headers arrive; the headers themselves are read by
    the writer thread (the objects are kept, not copied; the request body is not kept)."""
    ttfb = round((time.perf_counter() - t0) * 1000, 3)
    try:
        body = request.content
    except Exception:  # a streamed upload: no model to read
        body = None
    record: dict[str, Any] = {
        "v": VERSION,
        "time": wall,
        "deployment": _model_of(body),
        "status": response.status_code,
        "ttfb_ms": ttfb,
        "_url": request.url,
        "_resource": resource,
        "_headers": response.headers,
        "_request_headers": request.headers,
    }
    return _Call(spool, record, t0)


def _failed(
    spool: Spool, resource: str | None, request: Any, wall: float, t0: float, exc: BaseException
) -> None:
    """An attempt that got no response (timeout, refused connection): no ids, still a fact."""
    try:
        try:
            body = request.content
        except Exception:
            body = None
        spool.put(
            {
                "v": VERSION,
                "time": wall,
                "deployment": _model_of(body),
                "status": None,
                "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
                "request_id": "",
                "apim_request_id": "",
                "error": type(exc).__name__,
                "complete": False,
                "_url": request.url,
                "_resource": resource,
                "_request_headers": request.headers,
            }
        )
    except Exception:
        pass


# ------------------------------------------------------------------------- stream wrappers
class _SyncObserved:
    """Passes the network stream through, showing each chunk to the call first."""

    def __init__(self, inner: Any, call: _Call) -> None:
        self._inner = inner
        self._call = call

    def __iter__(self) -> Iterator[bytes]:
        call = self._call
        try:
            for chunk in self._inner:
                call.feed(chunk)
                yield chunk
        except GeneratorExit:
            call.finish(complete=False)
            raise
        except BaseException as exc:
            call.finish(complete=False, error=exc)
            raise
        call.finish(complete=True)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._call.finish(complete=False)


class _AsyncObserved:
    def __init__(self, inner: Any, call: _Call) -> None:
        self._inner = inner
        self._call = call

    async def __aiter__(self) -> Any:
        call = self._call
        try:
            async for chunk in self._inner:
                call.feed(chunk)
                yield chunk
        except GeneratorExit:
            call.finish(complete=False)
            raise
        except BaseException as exc:
            call.finish(complete=False, error=exc)
            raise
        call.finish(complete=True)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._call.finish(complete=False)


_STREAM_CLASSES: dict[str, tuple[type, type]] = {}


def _stream_classes(library: str) -> tuple[type, type]:
    """Stream wrappers that are instances of the library's byte-stream types (httpx asserts)."""
    classes = _STREAM_CLASSES.get(library)
    if classes is None:
        module = importlib.import_module(library)
        sync_cls = type("CapturedSyncStream", (_SyncObserved, module.SyncByteStream), {})
        async_cls = type("CapturedAsyncStream", (_AsyncObserved, module.AsyncByteStream), {})
        classes = _STREAM_CLASSES[library] = (sync_cls, async_cls)
    return classes


# ------------------------------------------------------------------------------ transports
def _observe(response: Any, call: _Call, stream_cls: type) -> None:
    """Watch the body as it streams; a body already read (a mock transport) is seen at once."""
    content = getattr(response, "_content", None)
    if isinstance(content, bytes):
        call.feed(content)
        call.finish(complete=True)
    else:
        response.stream = stream_cls(response.stream, call)


class _CaptureTransport:
    """Wraps a sync transport: times the attempt and observes its response stream."""

    def __init__(self, inner: Any, spool: Spool, resource: str | None, library: str) -> None:
        self.inner = inner
        self.spool = spool
        self.resource = resource
        self._stream_cls = _stream_classes(library)[0]

    def handle_request(self, request: Any) -> Any:
        wall, t0 = time.time(), time.perf_counter()
        try:
            response = self.inner.handle_request(request)
        except BaseException as exc:
            _failed(self.spool, self.resource, request, wall, t0, exc)
            raise
        try:
            call = _begin(self.spool, self.resource, request, response, wall, t0)
            _observe(response, call, self._stream_cls)
        except Exception:
            self.spool.errors += 1
        return response

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> _CaptureTransport:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)


class _AsyncCaptureTransport:
    """Wraps an async transport."""

    def __init__(self, inner: Any, spool: Spool, resource: str | None, library: str) -> None:
        self.inner = inner
        self.spool = spool
        self.resource = resource
        self._stream_cls = _stream_classes(library)[1]

    async def handle_async_request(self, request: Any) -> Any:
        wall, t0 = time.time(), time.perf_counter()
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException as exc:
            _failed(self.spool, self.resource, request, wall, t0, exc)
            raise
        try:
            call = _begin(self.spool, self.resource, request, response, wall, t0)
            _observe(response, call, self._stream_cls)
        except Exception:
            self.spool.errors += 1
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> _AsyncCaptureTransport:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.inner.__aexit__(*exc)


def _library_of(obj: Any) -> str:
    library = type(obj).__module__.split(".", 1)[0]
    if library not in ("httpx", "httpx2"):
        raise TypeError(f"expected an httpx or httpx2 client or transport, got {type(obj)!r}")
    return library


def transport(
    inner: Any,
    *,
    spool: str | os.PathLike[str],
    resource: str | None = None,
    asynchronous: bool | None = None,
    **spool_options: Any,
) -> Any:
    """``inner`` (an httpx/httpx2 transport) wrapped with capture, for ``Client(transport=…)``.

    ``asynchronous``: whether ``inner`` serves an ``AsyncClient`` (guessed from its methods when
    not given).
    """
    if isinstance(inner, (_CaptureTransport, _AsyncCaptureTransport)):
        return inner
    library = _library_of(inner)
    target = _spool_for(spool, **spool_options)
    if asynchronous is None:
        asynchronous = not hasattr(inner, "handle_request")
    if asynchronous:
        return _AsyncCaptureTransport(inner, target, resource, library)
    return _CaptureTransport(inner, target, resource, library)


def instrument(
    client: Any,
    *,
    spool: str | os.PathLike[str],
    resource: str | None = None,
    **spool_options: Any,
) -> Any:
    """Capture every request ``client`` (``httpx2``/``httpx`` ``Client`` or ``AsyncClient``)
    sends; returns ``client`` itself, ready for ``AnthropicFoundry(http_client=…)``.

    ``resource`` names the Foundry resource when the URL does not (a custom endpoint);
    ``spool_options``: ``max_bytes``, ``backups``, ``queue_size``, ``mode`` of the spool.
    """
    module = importlib.import_module(_library_of(client))
    asynchronous = isinstance(client, module.AsyncClient)
    options = {"spool": spool, "resource": resource, "asynchronous": asynchronous}
    client._transport = transport(client._transport, **options, **spool_options)
    mounts = getattr(client, "_mounts", None)
    if isinstance(mounts, dict):
        for pattern, mounted in list(mounts.items()):
            if mounted is not None:
                mounts[pattern] = transport(mounted, **options, **spool_options)
    return client

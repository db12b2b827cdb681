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
``content_block_delta``, ``usage`` (input/output/cache tokens, from the JSON body or a
stream's first ``message_start`` and last ``message_delta``), ``request-id``,
``apim-request-id``, region, error type/code (a stream's from an error event in its last data
line), retry-after, the SDK's attempt number. Never prompts, completions, headers other than
those ids, or keys: the request body is only searched for its ``"model"`` value, the response
bytes only for ``usage`` and the error type.

Never in the way: everything the capture does is inside ``try``, and the request path only stamps
times and keeps references. A JSON answer or error with a ``content-length`` of at most 64 KB (any
body so announced that is not an event stream) is read whole by the transport before it returns, as
the SDK reads it at once anyway, and handed on as the tuple of its chunks: no wrapper object,
iterator or close hook per call (it cut the calling thread's CPU per JSON call against the emulator
by 9 to 13 µs, of 22 to 31; its record says ``complete`` when the body arrived whole, read by the
application or not). Any other response stream is passed through chunk by chunk (observed, not
buffered): a JSON body is passed on and kept by C code alone (no bytecode per chunk); a stream's
chunks, one list append each (and, up to the first delta, whose arrival is the TTFT, one to a list
of arrival times: a ``(chunk, time)`` tuple per chunk cost more); at the end, the request's retry
count is read (where the SDK put it the last time: one comparison), and one flat tuple of times,
bytes, the URL's parsed parts and the response's header entries goes into a bounded buffer, never an
object of the call (when it is full the record is dropped and counted, never waited for; a body with
more than 64 KB kept is cut to what the writer reads first). Reading the request's model, picking
the response headers wanted, joining and searching the chunks, parsing usage, formatting times and
JSON encoding happen on a background writer thread, which wakes once a second and releases the GIL
every few records, so a slow or broken disk neither slows nor breaks the application. The spool is
append-only JSONL, rotated at ``max_bytes`` into ``path.1 … path.{backups}``; one writer thread per
path per process; several processes may share a path (each batch is one ``O_APPEND`` write, and a
writer notices that another rotated the file). ``spool_stats(path)`` reports records written,
dropped, failed and queued, and the writer's CPU. Overhead is measured by ``python -m benchmarks
capture``.

Dependency-light by design: stdlib only at import time (the HTTP library is imported when a
client is instrumented, and it is the one the application already uses). This file can be
vendored as is.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import operator
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from itertools import chain, filterfalse, islice
from time import perf_counter
from typing import Any, NamedTuple

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
#: Bytes of a body's end kept for the ``usage`` search (a large JSON body, a long stream).
_TAIL_KEEP = 16 * 1024
#: The head (a body's first chunks) stops at this many bytes (or ``_HEAD_CHUNKS`` chunks).
_HEAD_MAX = 64 * 1024
#: The first chunks, kept with their arrival times (the TTFT is the time of the one holding
#: the first delta); a stream's first events, message_start included, are in them. A stream
#: whose first delta comes later is searched on chunk by chunk, up to ``_HEAD_MAX`` bytes.
_HEAD_CHUNKS = 16
#: After the head, chunks are collected in a list cut to its last ``_TAIL_KEEP`` bytes whenever
#: it holds more chunks than this (amortised: no per-chunk size bookkeeping).
_TAIL_CHUNKS = 16
#: Request bodies up to this size are kept (a reference) for the writer to read their ``model``;
#: a larger one is read on the request path (its length would crowd the spool's buffer).
_BODY_DEFER_MAX = 256 * 1024
#: The first content delta of a stream: its arrival is the time to first token. Quoted, so a
#: mention inside a text (JSON-escaped quotes) does not match.
_TTFT_MARK = b'"content_block_delta"'
_MARK_CARRY = len(_TTFT_MARK) - 1
#: Records encoded between two voluntary GIL releases of the writer thread.
_YIELD_EVERY = 32
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
#: The events a stream's record is read from: the first ``message_start`` (the stream's first
#: event), the last ``message_delta`` (its counts are cumulative) and an ``error`` event in the
#: last data line (an error ends a stream). Only the start and the end of a stream are searched,
#: so the writer's work does not grow with the answer's length (it searched the whole stream
#: three times before, ~0.6 µs per 2 KB of events each time).
_SSE_START, _SSE_DELTA, _SSE_ERROR = b'"message_start"', b'"message_delta"', b'"error"'
#: The integer token counts of a ``usage`` object (``cache_creation``'s TTL split included);
#: names this specific occur nowhere else in a message_start/message_delta event.
_USAGE_INTS = re.compile(
    rb'"(input_tokens|output_tokens|cache_read_input_tokens|cache_creation_input_tokens'
    rb'|ephemeral_5m_input_tokens|ephemeral_1h_input_tokens)"\s*:\s*(\d+)'
)
#: Bytes the spool's buffer may hold (JSON bodies and SSE lines awaiting the writer).
DEFAULT_MAX_BUFFER_BYTES = 32 * 1024 * 1024
_DECODER = json.JSONDecoder()


def _unserializable(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


#: One compact encoder for every record (``json.dumps`` with options builds a new encoder per
#: call); the C encoder directly when there is one (it is what ``json`` itself uses).
_C_ENCODER = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,
        _unserializable,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )
    if getattr(json.encoder, "c_make_encoder", None) is not None
    else None
)


def _encode(record: dict[str, Any]) -> str:
    if _C_ENCODER is not None:
        return "".join(_C_ENCODER(record, 0))
    return _FALLBACK_ENCODE(record)


_FALLBACK_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_WEIGHT = operator.itemgetter(1)
_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
_EPHEMERAL_FIELDS = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
#: The usage members of a JSON body whose counts are all integers, by how many there are
#: (``cache_creation`` absent or not an object: four), in the order ``_usage_record`` keeps.
_USAGE_FORMS = {
    len(fields): ",".join(f'"{name}":%d' for name in fields)
    for fields in (_USAGE_FIELDS, _USAGE_FIELDS + _EPHEMERAL_FIELDS)
}
_INT_ONLY = {int}


# ------------------------------------------------------------------------------------ spool
class Spool:
    """Append-only, rotated JSONL file written by a background thread from a bounded buffer.

    ``put`` never blocks and never raises: it appends to a ``deque`` (no syscall, no thread
    wake-up: the writer polls every ``interval`` seconds and writes what accumulated in one
    ``write``; it is woken early only when a quarter of ``queue_size`` is waiting), or drops and
    counts the record when ``queue_size`` records (or ``max_buffer_bytes`` of kept bytes) are
    already waiting. Records are encoded by the writer thread, which releases the GIL every
    ``_YIELD_EVERY`` records so that a large batch does not hold up the application's threads.
    The interval is 1 s by default (OpenTelemetry's batch span processor waits 5 s): the writer
    runs with cold caches after the application's own work, and one wake per second instead of
    five cut its CPU per record by about a third (same-process runs against the emulator, 76
    against 51 µs; 2 s gave 47 and 5 s 45). ``written``/``dropped``/``errors`` count records;
    ``last_error`` keeps the last write failure (one line); ``writer_cpu`` is the writer thread's
    CPU time in seconds (what capture costs off the request path).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        queue_size: int = DEFAULT_QUEUE,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        interval: float = 1.0,
        mode: int = 0o644,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.max_bytes = max(1024, int(max_bytes))
        self.backups = max(0, int(backups))
        self.capacity = max(1, int(queue_size))
        self._early = max(1, self.capacity // 4)  # this many waiting: wake the writer now
        self.max_buffer_bytes = max(0, int(max_buffer_bytes))
        self.interval = interval
        self.mode = mode
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.last_error = ""
        self.writer_cpu = 0.0
        self._fresh_state()

    def _fresh_state(self) -> None:
        self._buffer: deque[tuple[Any, int]] = deque()
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
    def put(self, record: Any, weight: int = 0) -> bool:
        """Buffer one record (a dict, or a finished attempt that the writer turns into one;
        ``weight``: bytes it holds for the writer); False (and counted) if the buffer is full."""
        if self._thread is None:
            self._start()
        buffer = self._buffer
        waiting = len(buffer)
        if waiting >= self.capacity:
            self.dropped += 1
            return False
        if weight:
            with self._held_lock:
                if self._held + weight > self.max_buffer_bytes:
                    self.dropped += 1
                    return False
                self._held += weight
        buffer.append((record, weight))
        if waiting == self._early:
            self._wake.set()
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
            c0 = time.thread_time()
            try:
                while buffer:
                    # only this thread pops: the first n are there (taken in C, not a loop)
                    batch = list(islice(iter(buffer.popleft, None), min(len(buffer), _BATCH)))
                    try:
                        self._write_batch(batch)
                    except Exception as exc:  # never let the thread die
                        self._fail(len(batch), exc)
                    del batch  # what the records referenced is freed now, not at the next wake
            finally:
                self.writer_cpu += time.thread_time() - c0
                self._busy = False
            if self._stopping:
                return

    def _write_batch(self, batch: list[tuple[Any, int]]) -> None:
        released = sum(map(_WEIGHT, batch))
        if time.monotonic() < self._retry_at:
            self.errors += len(batch)
            with self._held_lock:
                self._held -= released
            return
        logged = _iso(time.time())
        texts: list[str] = []
        try:
            for n, (record, _) in enumerate(batch, 1):
                try:
                    line = None
                    if type(record) is tuple:  # an attempt, as the request path left it
                        try:
                            line = _line(record, logged)  # the usual shape
                        except Exception:
                            line = None
                        if line is None:
                            record = _finalize(_settle(record))
                    elif type(record) is _Facts:  # an attempt with a large body, cut already
                        record = _finalize(record)
                    elif isinstance(record.get("time"), float):
                        record["time"] = _iso(record["time"])
                    if line is None:
                        record["logged"] = logged
                        line = _encode(record)
                except Exception as exc:  # one bad record is skipped, not the batch
                    self._fail(1, exc, backoff=False)
                    continue
                texts.append(line)
                if not n % _YIELD_EVERY:
                    time.sleep(0)  # let the application's threads run (a GIL hand-off)
        finally:
            if released:
                with self._held_lock:
                    self._held -= released
        if not texts:
            return
        done = 0
        try:
            fd = self._open()
            data = ("\n".join(texts) + "\n").encode("ascii")  # ensure_ascii: ASCII text
            if self._size + len(data) <= self.max_bytes:  # the usual case: no rotation
                self._write_bytes(fd, data)
                self._size += len(data)
                self.written += len(texts)
                self._backoff = 0.5
                return
        except OSError as exc:
            self._fail(len(texts), exc)
            self._close_fd()
            return
        lines = [text.encode("ascii") + b"\n" for text in texts]
        try:
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
    """Counters of this process's spool at ``path``: records ``written``, ``dropped`` (buffer
    full), ``errors`` (write failures), ``queued`` (waiting), ``last_error``, ``writer_cpu_s``."""
    spool = _SPOOLS.get(os.path.abspath(os.fspath(path)))
    if spool is None:
        return {
            "written": 0,
            "dropped": 0,
            "errors": 0,
            "last_error": "",
            "queued": 0,
            "writer_cpu_s": 0.0,
        }
    return {
        "written": spool.written,
        "dropped": spool.dropped,
        "errors": spool.errors,
        "last_error": spool.last_error,
        "queued": len(spool._buffer),
        "writer_cpu_s": spool.writer_cpu,
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


# ------------------------------------------------------------------------------ one attempt
class _Attempt:
    """One HTTP attempt, from the application's side: time stamps and references.

    While the call runs, only references are kept (the request, the response's headers, its
    first and last chunks). When it ends, :meth:`_finish` stamps the end and queues a flat
    tuple of what the record needs (the request's retry count read, the rest kept) for the
    spool's writer thread, which reads the values out of it (the request's ``model``, the
    resource its URL names, five response headers, the kept chunks) and turns them into the record:
    :func:`_line` for the usual shapes, :func:`_settle` then :func:`_finalize` for any other.
    Subclassed by the stream wrappers (:func:`_stream_classes`), so one object per attempt.
    """

    def __init__(
        self,
        spool: Spool,
        resource: str | None,
        request: Any,
        wall: float,
        t0: float,
        response: Any = None,
    ) -> None:
        """Starts watching ``response`` (None: the attempt got none): its body as it streams,
        or at once a body already read (a mock transport's)."""
        self.spool = spool
        self.resource = resource
        self.request = request
        self.wall = wall
        self.t0 = t0
        # Every attribute is set here, always in this order: the instances then share one key
        # layout and the interpreter reads and writes them by index. Class-level defaults for
        # those set only when it happens cost more where capture runs, between the SDK's own
        # work: each read missed the instance, went to the class and, under callgrind's cache
        # simulation of the replay in ``benchmarks/capture.py``, the type cache missed 23 more
        # times a call and the L1 caches ~650 more times (the 30 more bytecodes cost less).
        self.head: list[bytes] = []
        # a stream's arrival times and last chunks, lists of their own (``_observed``)
        self.times: Any = ()
        self.tail: Any = ()
        self.inner: Any = None
        self.headers: Any = None
        self.status: int | None = None
        self.t_head = 0.0
        self.ttft = 0.0
        self.sse = False
        self.cut = False
        self.done = False
        if response is None:
            return
        self.t_head = perf_counter()
        self.status = response.status_code
        self.headers = response.headers
        content = getattr(response, "_content", None)
        if isinstance(content, bytes):
            self.head.append(content)  # arrived whole: no time to first token
            self.times = [0.0]
            self._finish(True)
        else:
            self.inner = response.stream
            response.stream = self

    def _finish(self, complete: bool, error: BaseException | None = None, end: float = 0.0) -> None:
        """The end of the attempt: stamp it and queue its facts for the writer (never raises).

        What is queued is one flat tuple of times, bytes, the request's retry count, its URL's
        parsed parts (httpx's tuple of strings), the response's header entries (copied to a tuple)
        and the kept chunks, never the request, the response, their headers objects or this attempt:
        whatever outlives the call survives the young generations of Python's cyclic GC, is
        traversed by them and, promoted, hastens full collections of the application's whole heap.
        Queuing the attempt itself (which holds the request and its URL, headers, extensions and
        stream) cost more GC time than the writer's own work: ``gc.callbacks`` timings over the
        replay of ``benchmarks/capture.py``, the buffer drained every 300 calls, gave 53 µs per JSON
        call over plain calls, against 6 µs for a tuple. What the tuple keeps alive costs too, GC or
        not: the memory the application would have reused at once stays taken until the writer runs,
        so its next allocations land on colder memory. The request's ~20 header entries (~80
        objects) are therefore read here rather than kept (the retry count is looked for where it
        was found the last time: a loop over the entries up to it cost ~100 bytecodes a call); with
        them and the URL object kept, 100 JSON calls of that replay held until a drop cost ~40
        against ~15 µs a call dropped at once (GC off or on alike). The URL's parsed parts are kept,
        a tuple of strings that the GC stops tracking at its first look, and the writer names the
        resource from them. The response's entries (~30 objects) are still copied, not picked: a
        dict of them here made the request path ~30 thousand instructions longer (callgrind) and the
        JSON latency target was missed. The exception goes by name (no traceback waits). A large
        response or request body is cut (and its model read) here instead, so that the buffer holds
        only the bytes the writer reads.
        """
        if self.done:
            return
        self.done = True
        t_end = end or perf_counter()  # (``end``: a body read whole, its end stamped then)
        spool = self.spool
        try:
            head, tail, request = self.head, self.tail, self.request
            kept = len(head[0]) if len(head) == 1 else sum(map(len, head))
            if tail:
                kept += sum(map(len, tail))
            body = getattr(request, "_content", None)  # absent: a streamed upload
            weight = kept + (len(body) if body else 0)
            listed = getattr(request.headers, "_list", None)
            if listed is None:
                retry = _wanted(request.headers, _REQUEST_NAMES)[0]
            else:  # where the SDK put it last time (it builds its headers in one order)
                at = _retry_at
                entry = listed[at] if len(listed) > at else None
                retry = entry[2] if entry and entry[1] == _RETRY_NAME else _retry_of(listed)
            headers = self.headers
            if headers is not None:
                listed = getattr(headers, "_list", None)
                if listed is not None:
                    headers = tuple(listed)
            facts = (
                self.wall,
                self.t0,
                self.t_head,
                self.ttft,
                t_end,
                self.status,
                complete,
                "" if error is None else type(error).__name__,
                self.resource or getattr(request.url, "_uri_reference", request.url),
                body,
                retry,
                tuple(head),
                tuple(self.times),
                tuple(tail),
                self.sse,
                self.cut,
                headers,
            )
            if kept <= _FULL_PARSE_MAX and weight - kept <= _BODY_DEFER_MAX:
                spool.put(facts, weight)
                return
            settled = _settle(facts)
            spool.put(settled, len(settled.head) + len(settled.tail) + len(settled.body or b""))
        except Exception:  # the application never sees a capture failure
            spool.errors += 1


class _SyncObserved(_Attempt):
    """Passes the network stream through untouched, keeping the chunks that matter.

    Per chunk on the request path, no parsing: the first chunks are kept with the time each
    arrived, up to the one that holds the first ``content_block_delta`` (one substring test per
    chunk), whose time is the TTFT, or ``_HEAD_CHUNKS`` chunks; the writer checks that no mark
    split across two earlier chunks came first (and finds one there when no chunk held a whole
    one). Later chunks go to a short list, by C code (``filterfalse``/``islice``), cut to its
    last ``_TAIL_KEEP`` bytes every ``_TAIL_CHUNKS`` chunks (the final usage is in the last
    events). A JSON body is kept whole by C code (:meth:`__iter__`); the head of a stream whose
    first delta is not among its first chunks (a stream split into tiny chunks, searched chunk
    by chunk until that delta), or of a body that does not start with ``{``, goes on to
    ``_HEAD_MAX`` bytes (:meth:`_rest_of_head`). Bodies with more than ``_FULL_PARSE_MAX``
    bytes kept are cut to what the writer reads at the end of the call, on the request path.
    (Stamping the head through ``zip`` with a callable iterator over ``perf_counter``, all C,
    measured slower than this loop. The times go to a list of their own: a ``(chunk, time)``
    tuple per chunk cost the calling thread ~15 to 25 µs more a stream of the emulator's, in the
    SDK flow of ``benchmarks/capture.py``'s replay (same-process blocks of calls, alternated),
    though four tuples take well under a microsecond in a tight loop.)
    """

    def __iter__(self) -> Iterator[bytes]:
        """A JSON body (its first chunk opens an object) is passed on and kept by C code alone:
        ``chain`` of the first chunk, ``filterfalse`` that appends each later one to the head,
        and a sentinel iterator whose one call ends the attempt when the body is exhausted, so
        no bytecode runs per chunk and no generator frame is made (a JSON body has no TTFT; an
        exception while it is read reaches :meth:`close`, which httpx calls while handling it).
        Anything else (an event stream) is watched chunk by chunk by :meth:`_observed`."""
        chunks = iter(self.inner)
        try:
            first = next(chunks, None)
        except BaseException as exc:
            self._finish(False, exc)
            raise
        if first is None:
            self._finish(True)
            return iter(())
        if first[:1] == b"{":
            head = self.head
            head.append(first)
            ended = iter(partial(self._finish, True), None)  # called once, at the body's end
            return chain((first,), filterfalse(head.append, chunks), ended)
        return self._observed(first, chunks)

    def _observed(self, first: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
        head = self.head
        times: list[float] = []
        tail: list[bytes] = []
        self.times, self.tail = times, tail
        try:
            chunks = chain((first,), chunks)
            size = 0
            delta = False
            for chunk in chunks:
                head.append(chunk)
                times.append(perf_counter())
                yield chunk
                size += len(chunk)
                if chunk.find(_TTFT_MARK) >= 0:  # (not ``in``: see _sse_usage)
                    delta = True  # the rest goes to the tail
                    self.ttft = times[-1]  # the writer checks no earlier chunk completed one
                    break
                if len(head) == _HEAD_CHUNKS or size >= _HEAD_MAX:
                    break
            else:
                chunks = None  # the stream ended within its head
            if chunks is not None:
                if not delta:
                    yield from self._rest_of_head(chunks)
                while True:
                    # Up to the next cut, the chunks are passed on and kept by C code
                    # (``filterfalse`` calls ``tail.append``, which returns None, on each one
                    # and yields them all): no bytecode of this loop runs per chunk.
                    room = _TAIL_CHUNKS + 1 - len(tail)
                    yield from filterfalse(tail.append, islice(chunks, room))
                    if len(tail) <= _TAIL_CHUNKS:
                        break  # the stream ended short of a cut
                    tail[:] = (b"".join(tail)[-_TAIL_KEEP:],)
                    self.cut = True
        except GeneratorExit:
            self._finish(False)
            raise
        except BaseException as exc:
            self._finish(False, exc)
            raise
        self._finish(True)

    def _rest_of_head(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """After the first chunks, the head goes on (up to ``_HEAD_MAX`` bytes) for a JSON body
        (read whole when it is small; the response's ``model`` is at its start) and for an event
        stream whose first chunks held no delta (searched chunk by chunk for it: its time is the
        TTFT)."""
        head = self.head
        times = self.times
        data = b"".join(head)
        first = data.lstrip()[:1]
        size = len(data)
        if not first or size >= _HEAD_MAX:
            return
        if first in b"{[":
            for chunk in chunks:
                head.append(chunk)
                times.append(0.0)
                yield chunk
                size += len(chunk)
                if size >= _HEAD_MAX:
                    return
            return
        if _TTFT_MARK in data:
            return
        self.sse = True
        carry = data[-_MARK_CARRY:]
        for chunk in chunks:
            head.append(chunk)
            times.append(0.0)
            size += len(chunk)
            window = carry + chunk
            if window.find(_TTFT_MARK) >= 0:
                self.ttft = perf_counter()
                yield chunk
                return
            carry = window[-_MARK_CARRY:]
            yield chunk
            if size >= _HEAD_MAX:
                return

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            if not self.done:  # cut short; httpx closes a body that failed while handling it
                error = sys.exception()
                # the SDK's stream also closes it when its consumer stops reading and the stream
                # is collected: a generator closed, which is no error
                self._finish(False, None if isinstance(error, GeneratorExit) else error)


class _AsyncObserved(_Attempt):
    """The async twin of :class:`_SyncObserved`, with the earlier per-chunk loop: the head is
    kept up to the first delta, whose arrival is stamped as the TTFT on the spot."""

    async def __aiter__(self) -> Any:
        head = self.head
        times: list[float] = []
        tail: list[bytes] = []
        self.times, self.tail = times, tail
        try:
            chunks = self.inner.__aiter__()
            size = 0
            carry = b""
            kind = 0
            async for chunk in chunks:
                head.append(chunk)
                times.append(0.0)
                size += len(chunk)
                if kind == 0:
                    first = chunk.lstrip()[:1]
                    if first:
                        kind = 1 if first in b"{[" else 2
                        self.sse = kind == 2
                if kind == 2:
                    window = carry + chunk if carry else chunk
                    if window.find(_TTFT_MARK) >= 0:
                        self.ttft = perf_counter()
                        yield chunk
                        break
                    carry = window[-_MARK_CARRY:]
                if size >= _HEAD_MAX:
                    yield chunk
                    break
                yield chunk
            async for chunk in chunks:
                tail.append(chunk)
                if len(tail) > _TAIL_CHUNKS:
                    tail[:] = (b"".join(tail)[-_TAIL_KEEP:],)
                    self.cut = True
                yield chunk
        except GeneratorExit:
            self._finish(False)
            raise
        except BaseException as exc:
            self._finish(False, exc)
            raise
        self._finish(True)

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            self._finish(False)


class _AsyncChunks(tuple):
    """The chunks of a body read whole, for an async client."""

    async def __aiter__(self) -> Any:
        for chunk in self:
            yield chunk


_STREAM_CLASSES: dict[str, tuple[type, type, type, type]] = {}


def _stream_classes(library: str) -> tuple[type, type, type, type]:
    """Stream wrappers that are instances of the library's byte-stream types (httpx asserts)."""
    classes = _STREAM_CLASSES.get(library)
    if classes is None:
        module = importlib.import_module(library)
        sync_cls = type("CapturedSyncStream", (_SyncObserved, module.SyncByteStream), {})
        async_cls = type("CapturedAsyncStream", (_AsyncObserved, module.AsyncByteStream), {})
        # a body read whole (:func:`_small_body`), passed on as the tuple of its chunks
        whole_cls = type("CapturedBody", (tuple, module.SyncByteStream), {})
        awhole_cls = type("CapturedAsyncBody", (_AsyncChunks, module.AsyncByteStream), {})
        classes = _STREAM_CLASSES[library] = (sync_cls, async_cls, whole_cls, awhole_cls)
    return classes


# ------------------------------------------------------------------- the writer's side
def _iso(epoch: float) -> str:
    """``2026-01-02T03:04:05.678Z``; the part up to the second is cached (records of one
    batch mostly share it; one tuple, swapped whole, so writer threads never mix halves)."""
    second = int(epoch)
    cached = _iso_cache
    if cached[0] != second:
        cached = _iso_second(second)
    return f"{cached[1]}.{int((epoch - second) * 1000):03d}Z"


def _iso_second(second: int) -> tuple[int, str]:
    """The cached ``(second, text up to the second)``, made anew for ``second``."""
    global _iso_cache
    cached = _iso_cache = (
        second,
        datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"),
    )
    return cached


_iso_cache: tuple[int, str] = (-1, "")
#: Resource of each (host, path) seen: an SDK client calls the same few URLs.
_RESOURCES: dict[tuple[Any, Any], str] = {}


def _resource_of(url: Any) -> str:
    """The Foundry resource of an attempt: ``url`` is its name already (given to ``instrument``)
    or what names it (host prefix, or ``/foundry/{name}/`` in the path): an httpx/httpx2 ``URL``
    or its parsed parts, as the request path queues them (read, not the ``URL``'s properties,
    which decode on each access), or any object with ``host`` and ``path``."""
    if type(url) is str:
        return url
    url = getattr(url, "_uri_reference", url)
    host = getattr(url, "host", "") or ""
    path = getattr(url, "path", "") or ""
    key = (host, path)
    resource = _RESOURCES.get(key)
    if resource is None:
        if len(_RESOURCES) >= 1024:
            _RESOURCES.clear()
        resource = _RESOURCES[key] = _resource_from(str(host).lower(), str(path))
    return resource


def _resource_from(host: str, path: str) -> str:
    for suffix in _HOST_SUFFIXES:
        if host.endswith(suffix):
            return host[: -len(suffix)]
    match = _PATH_RESOURCE.search(path)
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
    if raw.find(b"\\") < 0:  # (not ``in``: see _sse_usage)
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
        for key in _EPHEMERAL_FIELDS:
            if isinstance(creation.get(key), int):
                out[key] = creation[key]
    return out or None


#: Each name's place in a tuple of names that ``_wanted`` is asked for (a handful of tuples).
_SLOTS: dict[tuple[bytes, ...], dict[bytes, int]] = {}


def _wanted(headers: Any, names: tuple[bytes, ...]) -> tuple[bytes | None, ...]:
    """The first value of each of ``names`` (lowercase) in ``headers``, as bytes (latin-1):
    from httpx/httpx2's own list of ``(raw name, lowercased name, value)`` (their ``Headers``
    hold one; or a tuple of its entries), in one pass that fills a slot per name; or from any
    other mapping of str to str. (The request's retry count is read by :func:`_retry_of`.)"""
    entries = headers if type(headers) is tuple else getattr(headers, "_list", None)
    if type(entries) in (tuple, list) and (not entries or len(entries[0]) == 3):
        # one pass, each name's slot filled once (the first of duplicates): under callgrind
        # 10 thousand instructions a record for the emulator's eight headers, against 18 for a
        # dict of all entries built by C code (which allocates a pair per entry)
        slots = _SLOTS.get(names)
        if slots is None:
            slots = _SLOTS[names] = {name: n for n, name in enumerate(names)}
        found: list[bytes | None] = [None] * len(names)
        for entry in entries:
            n = slots.get(entry[1])
            if n is not None and found[n] is None:
                found[n] = entry[2]
        return tuple(found)
    try:
        text = {
            name.lower().encode("latin-1", "replace"): value.encode("latin-1", "replace")
            for name, value in reversed(list(headers.items()))
        }
        return tuple(map(text.get, names))
    except Exception:
        return (None,) * len(names)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


#: The SDK's attempt number, from the request's headers.
_RETRY_NAME = b"x-stainless-retry-count"
_REQUEST_NAMES = (_RETRY_NAME,)
#: Where in the request's header entries the retry count was found last (the SDK builds its
#: headers in one order: one comparison finds it there, instead of a loop over the entries).
_retry_at = 0


def _retry_of(entries: Any) -> bytes | None:
    """The retry count among a request's header entries; where it was found is kept."""
    global _retry_at
    at, entry = _entry_of(entries, _RETRY_NAME)
    if entry is None:
        return None
    _retry_at = at
    return entry[2]


def _entry_of(entries: Any, name: bytes) -> tuple[int, Any]:
    """The first header entry named ``name`` (lowercase) and its place; ``(0, None)``: none."""
    for at, entry in enumerate(entries):
        if entry[1] == name:
            return at, entry
    return 0, None


_RESPONSE_NAMES = (
    b"request-id",
    b"apim-request-id",
    b"x-ms-region",
    b"retry-after",
    b"content-type",
)
_NO_HEADERS = (None,) * len(_RESPONSE_NAMES)


class _Facts(NamedTuple):
    """One attempt as the writer reads it (times are ``perf_counter`` values but ``wall``)."""

    wall: float
    t0: float
    t_head: float
    ttft: float
    t_end: float
    status: int | None
    complete: bool
    error: str
    resource: str
    retry: str | None
    body: bytes | None
    model: str | None
    head: bytes
    tail: bytes
    cut: bool
    sse: bool
    request_id: str | None
    apim_request_id: str | None
    region: str | None
    retry_after: str | None
    content_type: str | None


def _settle(queued: tuple[Any, ...]) -> _Facts:
    """The facts of a finished attempt (the tuple :meth:`_Attempt._finish` queued) as
    :func:`_finalize` reads them (:func:`_line` reads the usual shapes the same way, inline):
    the header values as text, the model of a large body, the kept chunks joined and cut to
    size, the TTFT from the head's arrival times."""
    (wall, t0, t_head, ttft, t_end, status, complete, error, resource, body, retry, head, times,
     tail, sse, cut, headers) = queued  # fmt: skip
    model = None
    if body is not None and len(body) > _BODY_DEFER_MAX:
        model, body = _model_of(body), None
    head_bytes = (head[0] if len(head) == 1 else b"".join(head)) if head else b""
    tail_bytes = (tail[0] if len(tail) == 1 else b"".join(tail)) if tail else b""
    if not sse:
        first = head_bytes.lstrip()[:1]
        sse = bool(first) and first not in b"{["
        # (a JSON body may hold the mark, in a tool's input: no TTFT for it)
        ttft = _first_delta_time(head, times, head_bytes, ttft) if sse else 0.0
    if sse and tail_bytes and not cut and len(head_bytes) + len(tail_bytes) <= _FULL_PARSE_MAX:
        # The whole stream is here: read as one, as the head's chunks may already hold the
        # final events (the head is a count of chunks, not "up to the first delta").
        head_bytes, tail_bytes = head_bytes + tail_bytes, b""
    if not sse and (cut or len(head_bytes) + len(tail_bytes) > _FULL_PARSE_MAX):
        # A large JSON body: only its end is read (``usage`` follows ``content``).
        tail_bytes = (tail_bytes if cut else head_bytes + tail_bytes)[-_TAIL_KEEP:]
        head_bytes, cut = b"", True
    elif len(tail_bytes) > _TAIL_KEEP:
        tail_bytes, cut = tail_bytes[-_TAIL_KEEP:], True
    return _Facts(
        wall,
        t0,
        t_head,
        ttft,
        t_end,
        status,
        complete,
        error,
        _resource_of(resource),
        _text(retry),
        body,
        model,
        head_bytes,
        tail_bytes,
        cut,
        sse,
        *map(_text, _NO_HEADERS if headers is None else _wanted(headers, _RESPONSE_NAMES)),
    )


def _first_delta_time(
    head: tuple[bytes, ...], times: tuple[float, ...], data: bytes, seen: float
) -> float:
    """The TTFT of a stream whose head is ``head`` (joined: ``data``; each chunk's arrival in
    ``times``): the arrival of the chunk that completes the first delta's mark. ``seen``: the
    arrival of the head's last chunk, in which the request path found a whole mark (0.0: none
    found there); it is the answer unless a mark split across two earlier chunks completes
    before that chunk (then the chunks' times are walked, a loop that cost the writer ~10
    thousand instructions a stream)."""
    pos = data.find(_TTFT_MARK)
    if seen and pos + len(_TTFT_MARK) > len(data) - len(head[-1]):
        return seen
    return _arrival_of(head, times, pos)


def _arrival_of(head: tuple[bytes, ...], times: tuple[float, ...], pos: int) -> float:
    """When the chunk that completed the mark found at ``pos`` of the joined head arrived
    (0.0 when there is no mark, or no time was taken for that chunk)."""
    if pos < 0:
        return 0.0
    end = pos + len(_TTFT_MARK)
    seen = 0
    # not strict: were a time missing (a close from another thread between the two appends),
    # the chunks without one have no arrival, as when none was taken
    for chunk, arrived in zip(head, times, strict=False):
        seen += len(chunk)
        if seen >= end:
            return arrived
    return 0.0


def _finalize(f: _Facts) -> dict[str, Any]:
    """The record of one attempt, from the tuple the application thread left (writer thread)."""
    record: dict[str, Any] = {
        "v": VERSION,
        "time": _iso(f.wall),
        "deployment": "",
        "status": f.status,
        "resource": f.resource,
        "request_id": f.request_id or "",
        "apim_request_id": f.apim_request_id or "",
    }
    if f.t_head:
        record["ttfb_ms"] = round((f.t_head - f.t0) * 1000, 3)
    if f.ttft:
        record["ttft_ms"] = round((f.ttft - f.t0) * 1000, 3)
    record["latency_ms"] = round((f.t_end - f.t0) * 1000, 3)
    record["complete"] = f.complete
    if f.error:
        record["error"] = f.error
    if f.retry and f.retry.isascii() and f.retry.isdigit():
        record["attempt"] = int(f.retry)
    if f.region is not None:
        record["region"] = f.region
    if f.retry_after is not None:
        record["retry_after"] = f.retry_after[:32]
    if f.content_type:
        if "text/event-stream" in f.content_type:
            record["stream"] = True
        elif "json" in f.content_type:
            record["stream"] = False
    try:
        record["deployment"] = f.model if f.model is not None else _model_of(f.body)
        _read_body(record, f.head, f.tail, f.cut, f.sse)
    except Exception:  # a record with fewer facts beats no record
        pass
    return record


# The fast path of the writer (what nearly every record takes: a stream, or a whole successful
# JSON body). ``_settle`` then ``_finalize`` build a named tuple and a dict that the C encoder
# walks key by key. Here the queued tuple goes to its line in one function: the response
# headers wanted are picked by ``_wanted`` in one pass, the line is one ``%`` of format pieces
# in the record's key order with only the variable strings escaped (the ``json`` module's own C
# escaper), the usage written through one ``%`` template, and a stream's usage read straight
# from the bytes of the two events that carry it. In CPython 3.11 each C call (a ``find``, a
# regex, a ``%``) costs one to two thousand instructions whatever its work, so what counts is
# how many there are. Callgrind (GC off, per record of the replay in ``benchmarks/capture.py``,
# the writer alone): 163 thousand instructions for a JSON record and 212 thousand for a stream
# through ``_settle`` and the first fast line; 128 and 177 thousand with the line built by
# f-strings and the headers by a dict; 109 and 161 thousand at ae03e2d (since, the head's
# chunks come without their times: one ``map`` fewer, not counted again). Anything this path
# does not recognise as the usual shape returns None and takes the general path: the tests
# check that both write the same record (the same JSON values, key order included).
_ESC = json.encoder.encode_basestring_ascii
_START_LINE = b'data: {"type":"message_start",'
_DELTA_LINE = b'data: {"type":"message_delta",'
_LINE_START = (
    f'{{"v":{VERSION},"time":"%s.%03dZ","deployment":%s,"status":%d,"resource":%s,'
    '"request_id":%s,"apim_request_id":%s'
)


def _line(queued: tuple[Any, ...], logged: str) -> str | None:
    """The JSON line of a finished attempt (the tuple :meth:`_Attempt._finish` queued), the one
    ``_encode(_finalize(_settle(queued)))`` with ``logged`` writes; or None when it is not the
    usual shape (then the general path runs): a stream, or a whole successful JSON body."""
    (wall, t0, t_head, ttft, t_end, status, complete, error, resource, body, retry, head, times,
     tail, sse, cut, headers) = queued  # fmt: skip
    if (
        type(status) is not int
        or type(complete) is not bool
        or type(headers) is not tuple
        or not head
        or (body is not None and len(body) > _BODY_DEFER_MAX)
    ):
        return None
    data = head[0] if len(head) == 1 else b"".join(head)
    if not sse and data[:1] == b"{":
        if tail or cut or status >= 400 or len(data) > _FULL_PARSE_MAX:
            return None
        usage = _json_usage(data)
        ttft = 0.0  # the request path's mark was in the body's text (a tool's input)
    else:
        if not sse:
            if not data[:1].isalpha():  # blank or "[": the general path reads it
                return None
            ttft = _first_delta_time(head, times, data, ttft)
        rest = (tail[0] if len(tail) == 1 else b"".join(tail)) if tail else b""
        if rest and not cut and len(data) + len(rest) <= _FULL_PARSE_MAX:
            data, rest = data + rest, b""
        elif len(rest) > _TAIL_KEEP:
            rest, cut = rest[-_TAIL_KEEP:], True
        usage = _sse_usage(data, rest, cut)
    if usage is None:
        return None
    pairs, found = usage
    request_id, apim_request_id, region, retry_after, content_type = _wanted(
        headers, _RESPONSE_NAMES
    )
    resource = _resource_of(resource)
    second = int(wall)
    cached = _iso_cache
    if cached[0] != second:
        cached = _iso_second(second)
    # one ``%`` of format pieces joined as the record's fields come (not a growing line)
    form = _LINE_START
    args = [
        cached[1],
        int((wall - second) * 1000),
        _ESC(_model_of(body)),
        status,
        _ESC(resource),
        _ESC(request_id.decode("latin-1") if request_id else ""),
        _ESC(apim_request_id.decode("latin-1") if apim_request_id else ""),
    ]
    if t_head:
        form += ',"ttfb_ms":%.3f'
        args.append((t_head - t0) * 1000)
    if ttft:
        form += ',"ttft_ms":%.3f'
        args.append((ttft - t0) * 1000)
    form += (
        ',"latency_ms":%.3f,"complete":true' if complete else ',"latency_ms":%.3f,"complete":false'
    )
    args.append((t_end - t0) * 1000)
    if error:
        form += ',"error":%s'
        args.append(_ESC(error))
    if retry and retry.isdigit():  # bytes: ASCII digits only
        form += ',"attempt":%d'
        args.append(int(retry))
    if region is not None:
        form += ',"region":%s'
        args.append(_ESC(region.decode("latin-1")))
    if retry_after is not None:
        form += ',"retry_after":%s'
        args.append(_ESC(retry_after[:32].decode("latin-1")))
    if content_type:
        if content_type.find(b"text/event-stream") >= 0:
            form += ',"stream":true'
        elif content_type.find(b"json") >= 0:
            form += ',"stream":false'
    form += ',"usage":{%s}'
    args.append(pairs)
    if found is not None:
        form += ',"model":%s'
        args.append(_ESC(_unescape(found)))
    form += ',"logged":"%s"}'
    args.append(logged)
    return form % tuple(args)


def _sse_usage(head: bytes, tail: bytes, cut: bool) -> tuple[str, bytes | None] | None:
    """A stream's usage (JSON members, without braces) and raw ``model`` value, read as the
    general path reads them: from the first ``message_start`` event of ``head`` and the last
    ``message_delta`` event of the stream's end, each a ``data: {"type":…`` line; None for any
    other shape (an error in the last data line, no usage in message_start, a line that the
    general path would read differently)."""
    # ``find``, not ``in``: ``bytes in bytes`` first tries the needle as an int, and CPython
    # 3.11 formats then clears a TypeError for that (~1,200 instructions each time).
    start = head.find(_SSE_START)
    if start < 0:
        return None
    line = head.rfind(b"\n", 0, start) + 1
    if line + 14 != start or not head.startswith(_START_LINE, line):
        return None
    end = head.find(b"\n", start)
    if end < 0:
        end = len(head)
    pos = head.find(_USAGE_KEY, start, end)
    if pos < 0:
        return None
    found = _USAGE_INTS.findall(head, pos, end)
    if not found:
        return None
    usage = dict(found)
    model = _model_at(head, line, end)
    # where the general path looks for message_delta: the head alone, the cut tail after its
    # first (partial) line, or the tail (its start is a line start when the head ends one)
    if not tail:
        data, begin = head, 0
    elif cut:
        data, begin = tail, tail.find(b"\n") + 1
    elif head.endswith(b"\n"):
        data, begin = tail, 0
    else:
        return None
    if _error_line(data, begin) >= 0:
        return None
    delta = data.rfind(_SSE_DELTA, begin)
    if delta >= 0:
        line = data.rfind(b"\n", 0, delta) + 1
        if line + 14 != delta or not data.startswith(_DELTA_LINE, line):
            return None
        end = data.find(b"\n", delta)
        if end < 0:
            end = len(data)
        pos = data.find(_USAGE_KEY, delta, end)
        if pos >= 0:
            usage.update(_USAGE_INTS.findall(data, pos, end))
    pairs = _pairs(usage)  # the digits as they are: JSON already
    if _ODD_NUMBER.search(pairs) is not None:
        return None
    return pairs.decode("ascii"), model


#: ``%`` templates of usage members, by their keys (one set of keys for nearly every record).
_TEMPLATES: dict[tuple[Any, ...], Any] = {}


def _pairs(usage: dict[Any, Any]) -> Any:
    """``usage`` as JSON members without braces, by one ``%`` of a template cached for its keys
    (a ``%`` per member, joined, cost three times the instructions): ints by name (str), or
    the digits of a stream's counts as they are (bytes, already JSON). The keys are token-count
    names, from ``_USAGE_FIELDS`` or ``_USAGE_INTS``: nothing in them needs escaping."""
    keys = tuple(usage)
    template = _TEMPLATES.get(keys)
    if template is None:
        if len(_TEMPLATES) >= 256:
            _TEMPLATES.clear()
        template = _TEMPLATES[keys] = (
            b",".join(b'"%s":%%s' % key for key in keys)
            if keys and type(keys[0]) is bytes
            else ",".join(f'"{key}":%d' for key in keys)
        )
    return template % tuple(usage.values())


#: Digits that ``int()`` (the general path) would not copy as they are: a leading zero, or
#: too many (``int`` refuses over ``sys.get_int_max_str_digits()``).
_ODD_NUMBER = re.compile(rb":(?:0\d|\d{19})")


def _json_usage(body: bytes) -> tuple[str, bytes | None] | None:
    """A whole JSON body's usage (JSON members, without braces) and raw ``model`` value, as
    :func:`_read_json` reads them (the usage object found from the end, the first ``model``
    of the first 512 bytes); None when that would take the full parse, or a value that is not
    an integer. The usual object (all six counts integers) goes straight to one ``%`` of a
    fixed template: a dict of it and its cached template cost twice the instructions."""
    value = _usage_object(body)
    if type(value) is dict:
        counts = tuple(map(value.get, _USAGE_FIELDS))
        creation = value.get("cache_creation")
        if type(creation) is dict:
            counts += tuple(map(creation.get, _EPHEMERAL_FIELDS))
        if set(map(type, counts)) == _INT_ONLY:
            return _USAGE_FORMS[len(counts)] % counts, _model_at(body, 0, 512)
    usage = _token_counts(value)
    if usage is None:
        return None
    for count in usage.values():
        if type(count) is not int:
            return None
    return _pairs(usage), _model_at(body, 0, 512)


def _model_at(data: bytes, start: int, end: int) -> bytes | None:
    """``_MODEL_VALUE.search(data, start, end)``'s value: a plain ``"model":"…"`` read with
    two searches, anything else by the regex."""
    pos = data.find(b'"model":"', start, end)
    if pos >= 0 and data.find(b'"model"', start, pos) < 0:
        close = data.find(b'"', pos + 9, end)
        if pos + 9 <= close <= pos + 9 + 256 and data.find(b"\\", pos + 9, close) < 0:
            return data[pos + 9 : close]
    match = _MODEL_VALUE.search(data, start, end)
    return None if match is None else match.group(1)


def _read_body(record: dict[str, Any], head: bytes, tail: bytes, cut: bool, sse: bool) -> None:
    """``usage``, ``model`` and the error type from the kept bytes of the response body: its
    start and its end (``cut``: the middle is gone, and the end's first line with it)."""
    if not (sse or (head and head.lstrip()[:1] not in (b"{", b"[", b""))):
        if tail and not cut:
            head, tail = head + tail, b""
        if head or tail:
            _read_json(record, head, tail)
        return
    _sse_line(record, head, head.find(_SSE_START))
    # The end of the stream: the whole of it when it was kept whole; else its tail (cut: after
    # the tail's first line, which is partial; not cut: the head's last line may go on in it).
    if not tail:
        end = head
    elif cut:
        end = tail[tail.find(b"\n") + 1 :]
    else:
        end = head[head.rfind(b"\n") + 1 :] + tail
    _sse_line(record, end, end.rfind(_SSE_DELTA))
    _sse_line(record, end, _error_line(end, 0))


def _sse_line(record: dict[str, Any], data: bytes, pos: int) -> None:
    """The event of the line of ``data`` that holds ``pos`` (none: -1), if a data line. Quoted
    type names cannot occur unescaped in an event's text (JSON-escaped), only as JSON."""
    if pos < 0:
        return
    start = data.rfind(b"\n", 0, pos) + 1
    if data.startswith(b"data:", start):
        _sse_event(record, data[start + 5 : _line_end(data, pos)])


def _line_end(data: bytes, pos: int) -> int:
    """Where the line of ``data`` that holds ``pos`` ends (its newline, or the end of data)."""
    end = data.find(b"\n", pos)
    return len(data) if end < 0 else end


def _error_line(data: bytes, begin: int) -> int:
    """Where the last line of ``data`` after ``begin`` (a line start) that starts with
    ``data:`` starts, if it holds the ``"error"`` marker (an error event ends a stream);
    else -1. (``data:`` inside a line is JSON text.)"""
    pos = data.rfind(b"data:", begin)
    while pos > begin and data[pos - 1] != 0x0A:
        pos = data.rfind(b"data:", begin, pos)
    if pos < 0 or data.find(_SSE_ERROR, pos, _line_end(data, pos)) < 0:
        return -1
    return pos


def _sse_event(record: dict[str, Any], payload: bytes) -> None:
    """One kept data line. ``message_start``/``message_delta`` (``type`` first, as the API
    writes them): the integer token counts after ``"usage"`` are picked by one regex, and the
    message's ``model``, without decoding the event; anything else takes the full parse."""
    kind = payload.lstrip()[:40]
    start = kind.startswith(b'{"type":"message_start"')
    if start or kind.startswith(b'{"type":"message_delta"'):
        pos = payload.find(_USAGE_KEY)
        if pos >= 0:
            usage = {k.decode(): int(v) for k, v in _USAGE_INTS.findall(payload, pos)}
            if usage:
                record["usage"] = {**record["usage"], **usage} if "usage" in record else usage
        if start:
            match = _MODEL_VALUE.search(payload)
            if match is not None:
                record["model"] = _unescape(match.group(1))
        return
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


def _read_json(record: dict[str, Any], body: bytes, tail: bytes = b"") -> None:
    """A JSON body: whole (``body``) or, when it was large, only its end (``tail``)."""
    status = record.get("status") or 0
    if not body:  # only the end of a large body is left: the usage, searched from the end
        if status < 400:
            usage = _tail_usage(tail)
            if usage:
                record["usage"] = usage
        return
    if status >= 400:
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
    if usage is None:
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
    if "model" not in record:
        match = _MODEL_VALUE.search(body, 0, 512)
        if match is not None:
            record["model"] = _unescape(match.group(1))


def _usage_object(body: bytes) -> Any:
    """The top-level ``usage`` object, found from the end (it follows ``content``) and parsed;
    None when there is none or it does not parse."""
    pos = body.rfind(_USAGE_KEY)
    if pos < 0:
        return None
    after = pos + len(_USAGE_KEY)
    start = after + 1  # the "{" of ":{"
    if not body.startswith(b":{", after):  # not written compactly, as the API writes it
        start = body.find(b"{", after)
        if start < 0 or body[after:start].strip() != b":":
            return None
    try:
        value, _ = _DECODER.raw_decode(body[start:].decode("utf-8", "replace"))
    except ValueError:
        return None
    return value


def _tail_usage(body: bytes) -> dict[str, int] | None:
    """The top-level ``usage`` object's token counts (it follows ``content``)."""
    return _token_counts(_usage_object(body))


def _token_counts(usage: Any) -> dict[str, int] | None:
    """A parsed ``usage`` object's token counts; None without ``input_tokens`` (not the
    top-level usage of a response)."""
    counts = _usage_record(usage)
    return counts if counts and "input_tokens" in counts else None


# ------------------------------------------------------------------------------ transports
class _CaptureTransport:
    """Wraps a sync transport: times the attempt and observes its response stream."""

    def __init__(self, inner: Any, spool: Spool, resource: str | None, library: str) -> None:
        self.inner = inner
        self.spool = spool
        self.resource = resource
        self._stream_cls, _, self._whole_cls, _ = _stream_classes(library)

    def handle_request(self, request: Any) -> Any:
        """The attempt, its response and, for the usual JSON answer or error, its body read whole.

        The usual case's queued tuple (the one :meth:`_Attempt._finish` builds) is written out
        here, without an attempt object (the async twin and the unusual requests go through one,
        :func:`_read_whole`): with the queuing in a function of its own too, the calling thread's
        CPU per JSON call against the emulator was ~6 µs higher in two runs each, one after the
        other (``benchmarks/capture.py``'s live flow: +21 and +18 against +13 and +9 µs over plain
        calls; the run-to-run noise is ~5 µs), as each call of a function runs cold there. The
        header check alone in a function (:func:`_small_body`) measured within that noise.
        """
        wall, t0 = time.time(), perf_counter()
        try:
            response = self.inner.handle_request(request)
        except BaseException as exc:
            _failed(self._stream_cls, self.spool, self.resource, request, wall, t0, exc)
            raise
        t_head = perf_counter()
        if not _small_body(response):
            try:
                self._stream_cls(self.spool, self.resource, request, wall, t0, response)
            except Exception:
                self.spool.errors += 1
            return response
        stream = response.stream
        try:
            head = tuple(stream)
            stream.close()
        except BaseException as exc:
            _failed(self._stream_cls, self.spool, self.resource, request, wall, t0, exc, response)
            with contextlib.suppress(Exception):
                stream.close()
            raise
        t_end = perf_counter()
        response.stream = self._whole_cls(head)
        spool = self.spool
        try:  # the usual request, queued here (any other: _read_whole)
            body = request._content
            requested = request.headers._list
            if len(body) <= _BODY_DEFER_MAX:
                at = _retry_at
                entry = requested[at] if len(requested) > at else None
                retry = entry[2] if entry and entry[1] == _RETRY_NAME else _retry_of(requested)
                spool.put(
                    (
                        wall,
                        t0,
                        t_head,
                        0.0,
                        t_end,
                        response.status_code,
                        True,
                        "",
                        self.resource or request.url._uri_reference,
                        body,
                        retry,
                        head,
                        (),
                        (),
                        False,
                        False,
                        tuple(response.headers._list),
                    ),
                    (len(head[0]) if len(head) == 1 else sum(map(len, head))) + len(body),
                )
                return response
        except Exception:
            pass
        _read_whole(self, request, response, head, wall, t0, t_head, t_end)
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
        _, self._stream_cls, _, self._whole_cls = _stream_classes(library)

    async def handle_async_request(self, request: Any) -> Any:
        wall, t0 = time.time(), perf_counter()
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException as exc:
            _failed(self._stream_cls, self.spool, self.resource, request, wall, t0, exc)
            raise
        t_head = perf_counter()
        if _small_body(response):
            stream = response.stream
            try:
                head = tuple([chunk async for chunk in stream])
                await stream.aclose()
            except BaseException as exc:
                _failed(
                    self._stream_cls, self.spool, self.resource, request, wall, t0, exc, response
                )
                with contextlib.suppress(Exception):
                    await stream.aclose()
                raise
            t_end = perf_counter()
            response.stream = self._whole_cls(head)
            _read_whole(self, request, response, head, wall, t0, t_head, t_end)
            return response
        try:
            self._stream_cls(self.spool, self.resource, request, wall, t0, response)
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


def _failed(
    cls: type,
    spool: Spool,
    resource: str | None,
    request: Any,
    wall: float,
    t0: float,
    exc: BaseException,
    response: Any = None,
) -> None:
    """An attempt that got no response (timeout, refused connection: no ids, still a fact) or
    whose body failed while :func:`_small_body`'s kind was read whole (its status and ids)."""
    with contextlib.suppress(Exception):
        attempt = cls(spool, resource, request, wall, t0)
        if response is not None:
            attempt.status, attempt.headers = response.status_code, response.headers
        attempt._finish(False, exc)


#: Where in a response's header entries its content type and its length were found last (a
#: server writes its headers in one order: one comparison each finds them there).
_type_at = 0
_length_at = 0


def _small_body(response: Any) -> bool:
    """Whether the response's body is read whole by the transport, before it returns: a
    ``content-length`` of at most ``_FULL_PARSE_MAX`` bytes and no event stream (a JSON answer
    or error, which the SDK reads whole as soon as it gets the response).

    Why: the stream wrapper that watches any other body (:class:`_SyncObserved`) costs an
    object, its iterator and a close per call, where the application's caches are cold; a body
    read here, queued as one tuple and passed on as a tuple of its chunks (iterated by C code),
    cost the calling thread ~12 µs less per JSON call against the emulator (``benchmarks/
    capture.py``'s live flow, same process, alternated with the wrapper: +15 against +28 µs).
    """
    global _type_at, _length_at
    try:
        entries = response.headers._list
        at = _type_at
        entry = entries[at] if len(entries) > at else None
        if entry is None or entry[1] != b"content-type":
            at, entry = _entry_of(entries, b"content-type")
            _type_at = at
        if entry is not None and entry[2].find(b"event-stream") >= 0:
            return False
        at = _length_at
        entry = entries[at] if len(entries) > at else None
        if entry is None or entry[1] != b"content-length":
            at, entry = _entry_of(entries, b"content-length")
            if entry is None:
                return False
            _length_at = at
        length = entry[2]
        return len(length) <= 6 and length.isdigit() and int(length) <= _FULL_PARSE_MAX
    except Exception:  # not httpx's headers: the stream wrapper watches it
        return False


def _read_whole(
    transport: Any,
    request: Any,
    response: Any,
    head: tuple[bytes, ...],
    wall: float,
    t0: float,
    t_head: float,
    t_end: float,
) -> None:
    """Queues an attempt whose body was read whole through an attempt object: the async
    client's, and the sync client's unusual requests (a streamed upload, a large body; its usual
    ones are queued by :meth:`_CaptureTransport.handle_request` itself); never raises."""
    spool = transport.spool
    try:
        attempt = transport._stream_cls(spool, transport.resource, request, wall, t0)
        attempt.t_head, attempt.status = t_head, response.status_code
        attempt.headers = response.headers
        attempt.head.extend(head)
        attempt._finish(True, end=t_end)
    except Exception:
        spool.errors += 1


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

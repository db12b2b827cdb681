"""Request logs: Log Analytics ``AzureDiagnostics`` RequestResponse rows -> ``requests`` + rollups.

One job run per Log Analytics workspace (the workspaces come from the ``resources`` discovery
filled). These rows are the only server-side, per-request latency source, hence of percentiles.

Window. Incremental on ``TimeGenerated`` (when Azure emitted the log event, i.e. when the
response finished): from the workspace's watermark minus ``OVERLAP`` to now. ``OVERLAP`` is
15 minutes because Log Analytics ingests rows minutes after ``TimeGenerated`` (typically 2-5
min, occasionally more): a row that arrives late with a ``TimeGenerated`` up to 15 min behind
the watermark is read by the next cycle; every re-read is an upsert on the correlation id, so
overlap changes nothing. A first run (no watermark) starts at now - retention_days.

Slices. Log Analytics truncates a result at ``ROW_LIMIT`` (500,000) rows / 64 MB, and the SDK
holds a whole result in memory, so a large window is cut into time slices of about
``TARGET_ROWS`` rows: one count-per-hour query (:func:`collector.kql.request_counts_query`)
plans the slices (hours packed together, a busy hour cut into equal parts); a window of at most
``DIRECT_WINDOW`` (an incremental cycle) is one slice without a count, so a cycle costs one call
per workspace. A slice that still comes back truncated (``ROW_LIMIT`` rows, or a PartialError
saying the result set was too large) is discarded and halved. Slices are processed in time order;
each one's rows, rollups and watermark (its end) are written in one transaction, so memory stays
flat and an interrupted run resumes where it stopped.

Rows. ``CorrelationId`` (== the ``apim-request-id`` response header) is the natural key.
``properties_s`` is JSON text (or already an object) with ``modelDeploymentName``,
``modelName``, ``streamType``, ``requestTime``/``responseTime`` (.NET ticks). A request's
``time`` is when it *started*: ``requestTime`` when present, else ``TimeGenerated - DurationMs``
(the event is emitted at the response's end). Status is ``ResultSignature`` (a string).
Logs carry no tokens and no Anthropic request id: the upsert never overwrites ``request_id``,
tokens, ``ttft_ms`` or ``source`` a client capture may have written (a captured row becomes
``both``).

Problems. A ``LogsQueryPartialResult`` keeps its rows, marks the run partial and stops the run
there without advancing the watermark past that slice (the next cycle re-reads it). A malformed
row is skipped and counted in the run's error line (the watermark still advances: the row will
never parse better, and the error line says it was skipped). Rows of a known resource but an
undiscovered Claude deployment are kept with ``deployment_id`` NULL (re-linked once discovery
knows the deployment) and counted in the error line (run partial). Rows of resources discovery
does not track, or of non-Claude deployments (another model family on the same resource), are
not ours and are skipped silently (debug log).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from collector import kql, rollups
from collector.deployments import record_unlisted
from collector.errors import describe_azure_error
from collector.jobs.base import JobContext, ScopeOutcome, coverage_start
from collector.runs import get_watermark, set_watermark, start_run
from models.db import upsert
from models.tables import Deployment, Request, Resource

log = logging.getLogger("foundry_watch.collector.logs")

SOURCE = "logs"
#: Log Analytics' per-result record limit (results beyond it are truncated). Tests lower it.
ROW_LIMIT = 500_000
#: Rows per slice we aim for: one response in memory (~7 MB of JSON, ~50 MB as objects).
TARGET_ROWS = 10_000
#: Re-read window behind the watermark for rows Log Analytics ingests late.
OVERLAP = timedelta(minutes=15)
#: Windows up to this long are fetched as one slice without counting first.
DIRECT_WINDOW = timedelta(hours=2)
#: Granularity of the count query that plans the slices of a large window.
PLAN_BIN = timedelta(hours=1)
#: A truncated slice shorter than this is not halved again (recorded as partial instead).
MIN_SLICE = timedelta(seconds=1)
#: Cap on how many example names/reasons an error line lists.
_EXAMPLES = 3

_TICKS_AT_UNIX_EPOCH = 621_355_968_000_000_000  # .NET ticks (100 ns since 0001-01-01) at 1970
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PLAUSIBLE = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
_TRUNCATION_MARKERS = ("E_QUERY_RESULT_SET_TOO_LARGE", "exceeded the internal")
_REQUIRED_COLUMNS = ("TimeGenerated", "CorrelationId", "ResultSignature", "_ResourceId")

#: Columns a logs row sets; ``request_id``, tokens, ``ttft_ms`` and ``source`` are left to
#: whoever wrote them (client capture) when the row exists.
_UPDATE_COLUMNS = [
    "time",
    "resource_id",
    "deployment_id",
    "deployment_name",
    "model_name",
    "operation_name",
    "status_code",
    "duration_ms",
    "stream",
    "caller_ip",
]
#: Column widths of ``requests`` (PostgreSQL refuses longer values; keys longer are malformed).
_WIDTH = {"correlation_id": 64, "deployment_name": 128, "model_name": 128,
          "operation_name": 128, "caller_ip": 64}  # fmt: skip


def scope_of(customer_id: str) -> str:
    """The run/watermark scope of a workspace (its customer id never changes)."""
    return f"workspace/{customer_id}"


# ---------------------------------------------------------------------------------------------
# Row parsing
# ---------------------------------------------------------------------------------------------


class MalformedRow(ValueError):
    """One row that cannot become a request; its message is the short reason."""


class MalformedPayload(ValueError):
    """A response that cannot be read at all (e.g. the columns asked for are missing)."""


@dataclass
class Lookup:
    """Store ids for Azure names: lower-cased ARM id -> resource, (resource, name) -> deployment."""

    resources: dict[str, int]
    deployments: dict[tuple[int, str], int]

    @classmethod
    def load(cls, conn: Connection) -> Lookup:
        resources = {arm: rid for rid, arm in conn.execute(select(Resource.id, Resource.arm_id))}
        deployments = {
            (res_id, name.lower()): dep_id
            for dep_id, res_id, name in conn.execute(
                select(Deployment.id, Deployment.resource_id, Deployment.name)
            )
        }
        return cls(resources, deployments)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _fit(column: str, value: str) -> str:
    return value[: _WIDTH[column]]


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str) and value.strip():
        text = value.strip().replace("Z", "+00:00")
        # Kusto writes 7 fraction digits; Python takes at most 6.
        head, dot, rest = text.partition(".")
        if dot:
            digits = "".join(ch for ch in rest if ch.isdigit())
            rest = digits[:6] + rest[len(digits) :]
            text = f"{head}.{rest}"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise MalformedRow(f"TimeGenerated {value!r} is not a time") from None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    raise MalformedRow("TimeGenerated missing")


def _as_number(value: Any, what: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise MalformedRow(f"{what} {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MalformedRow(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise MalformedRow(f"{what} {value!r} is not a duration")
    return number


def _as_status(value: Any) -> int:
    text = _text(value)
    try:
        status = int(float(text)) if text else None
    except ValueError:
        status = None
    if status is None or not 100 <= status <= 999:
        raise MalformedRow(f"ResultSignature {value!r} is not an HTTP status")
    return status


def _as_properties(value: Any) -> dict[str, Any]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            raise MalformedRow("properties_s is not JSON") from None
        if isinstance(parsed, str):  # double-encoded: a JSON string holding the JSON object
            return _as_properties(parsed)
        if isinstance(parsed, dict):
            return parsed
    raise MalformedRow("properties_s is not a JSON object")


def ticks_to_datetime(value: Any) -> datetime | None:
    """.NET ticks (100 ns since 0001-01-01 UTC) -> aware UTC datetime; None if absent/absurd."""
    if value is None or isinstance(value, bool):
        return None
    try:
        ticks = int(value)
    except (TypeError, ValueError):
        try:
            ticks = int(float(value))
        except (TypeError, ValueError):
            return None
    try:
        result = _EPOCH + timedelta(microseconds=(ticks - _TICKS_AT_UNIX_EPOCH) // 10)
    except OverflowError:
        return None
    return result if _PLAUSIBLE[0] <= result < _PLAUSIBLE[1] else None


def _stream(value: Any) -> bool | None:
    text = _text(value).lower().replace("-", "").replace("_", "")
    if text == "streaming":
        return True
    if text == "nonstreaming":
        return False
    return None


def _is_claude(model_name: str) -> bool:
    """Discovery keeps only ``format: Anthropic`` deployments; an unknown deployment whose model
    is named and not Claude is another model family on the same resource: not ours."""
    return not model_name or "claude" in model_name.lower()


@dataclass
class Tally:
    """What one run met besides good rows; becomes the run's status and one-line error."""

    rows: int = 0
    malformed: int = 0
    malformed_reasons: Counter = field(default_factory=Counter)
    unknown: Counter = field(default_factory=Counter)  # deployment name -> rows
    foreign: int = 0
    partial: str = ""

    def error_line(self) -> str:
        parts = []
        if self.partial:
            parts.append(self.partial)
        if self.malformed:
            reasons = ", ".join(r for r, _ in self.malformed_reasons.most_common(_EXAMPLES))
            parts.append(f"{self.malformed} malformed row(s) skipped ({reasons})")
        if self.unknown:
            total = sum(self.unknown.values())
            names = ", ".join(n or "''" for n, _ in self.unknown.most_common(_EXAMPLES))
            parts.append(
                f"{total} row(s) of {len(self.unknown)} deployment(s) discovery does not know "
                f"({names}) kept without a deployment id; run discovery"
            )
        return "; ".join(parts)


def parse_row(values: Sequence[Any], index: dict[str, int], lookup: Lookup) -> dict | None:
    """One AzureDiagnostics row -> a ``requests`` row; None if the row is not ours.

    Raises :class:`MalformedRow` with a short reason for a row that cannot be a request.
    """

    def col(name: str) -> Any:
        i = index.get(name)
        return values[i] if i is not None and i < len(values) else None

    correlation_id = _text(col("CorrelationId"))
    if not correlation_id:
        raise MalformedRow("CorrelationId missing")
    if len(correlation_id) > _WIDTH["correlation_id"]:
        raise MalformedRow("CorrelationId too long")
    generated = _as_datetime(col("TimeGenerated"))
    status = _as_status(col("ResultSignature"))
    duration = _as_number(col("DurationMs"), "DurationMs")
    props = _as_properties(col("properties_s"))

    resource_id = lookup.resources.get(_text(col("_ResourceId")).lower())
    if resource_id is None:
        return None
    name = _text(props.get("modelDeploymentName"))
    model_name = _text(props.get("modelName"))
    deployment_id = lookup.deployments.get((resource_id, name.lower()))
    if deployment_id is None and not _is_claude(model_name):
        return None
    started = ticks_to_datetime(props.get("requestTime"))
    if started is None:
        started = generated - timedelta(milliseconds=duration or 0)
    return {
        "correlation_id": correlation_id,
        "time": started,
        "resource_id": resource_id,
        "deployment_id": deployment_id,
        "deployment_name": _fit("deployment_name", name),
        "model_name": _fit("model_name", model_name),
        "operation_name": _fit("operation_name", _text(col("OperationName"))),
        "status_code": status,
        "duration_ms": duration,
        "stream": _stream(props.get("streamType")),
        "caller_ip": _fit("caller_ip", _text(col("CallerIPAddress"))),
        "source": SOURCE,
    }


def parse_table(table: Any, lookup: Lookup, tally: Tally) -> list[dict]:
    """All rows of a result table that are ours, parsed; malformed/foreign ones counted."""
    if table is None:
        return []
    index = {str(name): i for i, name in enumerate(table.columns)}
    missing = [c for c in _REQUIRED_COLUMNS if c not in index]
    if missing:
        raise MalformedPayload(f"the query result lacks column(s) {', '.join(missing)}")
    out: list[dict] = []
    for row in table.rows:
        try:
            parsed = parse_row(list(row), index, lookup)
        except MalformedRow as exc:
            tally.malformed += 1
            tally.malformed_reasons[str(exc)] += 1
            continue
        if parsed is None:
            tally.foreign += 1
            continue
        out.append(parsed)
    return out


# ---------------------------------------------------------------------------------------------
# Slices
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slice:
    start: datetime
    end: datetime
    expected: int | None = None  # rows the count query saw, when planned


def _target_rows() -> int:
    """Rows per planned slice: TARGET_ROWS, but safely below a (test-lowered) ROW_LIMIT."""
    return max(1, min(TARGET_ROWS, ROW_LIMIT // 2))


def _split_evenly(start: datetime, end: datetime, parts: int) -> list[tuple[datetime, datetime]]:
    parts = max(1, parts)
    step = (end - start) / parts
    bounds = [start + step * i for i in range(parts)] + [end]
    return [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i] < bounds[i + 1]]


def _halve(piece: Slice) -> list[Slice] | None:
    if piece.end - piece.start < 2 * MIN_SLICE:
        return None
    half = None if piece.expected is None else piece.expected // 2
    return [Slice(a, b, half) for a, b in _split_evenly(piece.start, piece.end, 2)]


def _floor_to(t: datetime, step: timedelta) -> datetime:
    return _EPOCH + ((t - _EPOCH) // step) * step


def pack_slices(
    start: datetime, end: datetime, counts: Iterable[tuple[datetime, int]]
) -> list[Slice]:
    """Contiguous slices covering [start, end), each about ``_target_rows()`` rows.

    ``counts`` are (bin start, rows) from the count query; consecutive bins are packed while the
    sum stays within the target, a bin above it is cut into equal time parts. Empty stretches are
    still covered (a row ingested after the count must not fall into a gap).
    """
    target = _target_rows()
    pieces: list[list[Any]] = []  # [start, end, rows]
    t = _floor_to(start, PLAN_BIN)
    while t < end:
        pieces.append([max(start, t), min(end, t + PLAN_BIN), 0])
        t += PLAN_BIN
    starts = [p[0] for p in pieces]
    for when, n in counts:
        if not pieces:
            break
        # the piece containing the bin's start (robust to any bin alignment)
        lo, hi = 0, len(starts)
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            if starts[mid] <= when:
                lo = mid
            else:
                hi = mid
        pieces[lo][2] += int(n)
    slices: list[Slice] = []
    cur: list[Any] | None = None
    for p_start, p_end, n in pieces:
        if n > target:
            if cur is not None:
                slices.append(Slice(*cur))
                cur = None
            parts = math.ceil(n / target)
            for a, b in _split_evenly(p_start, p_end, parts):
                slices.append(Slice(a, b, n // parts))
        elif cur is not None and cur[2] + n <= target:
            cur[1], cur[2] = p_end, cur[2] + n
        else:
            if cur is not None:
                slices.append(Slice(*cur))
            cur = [p_start, p_end, n]
    if cur is not None:
        slices.append(Slice(*cur))
    return slices


@dataclass
class Answer:
    """One query's answer: its table, a partial-error text, and whether it was truncated."""

    table: Any
    partial: str
    truncated: bool


def _error_text(error: Any) -> str:
    if error is None:
        return ""
    code = getattr(error, "code", "") or ""
    message = getattr(error, "message", "") or ""
    details = getattr(error, "details", None)
    text = f"{code}: {message}".strip(": ")
    if details:
        text += " " + json.dumps(_plain(details), default=str)
    return text


def _plain(value: Any) -> Any:
    """SDK error models are Mapping-like objects; make them JSON-serialisable dicts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


def read_answer(result: Any) -> Answer:
    """Table + partial error + truncation of a ``LogsQueryResult``/``LogsQueryPartialResult``."""
    partial = ""
    if getattr(result, "partial_error", None) is not None or hasattr(result, "partial_data"):
        tables = getattr(result, "partial_data", None) or []
        partial = _error_text(getattr(result, "partial_error", None)) or "partial result"
    else:
        tables = getattr(result, "tables", None) or []
    table = tables[0] if tables else None
    rows = len(table.rows) if table is not None else 0
    truncated = rows >= ROW_LIMIT or any(m in partial for m in _TRUNCATION_MARKERS)
    return Answer(table, partial, truncated)


def _partial_summary(partial: str) -> str:
    """A short reason from a partial error text (code + innermost message if we can find it)."""
    code, _, rest = partial.partition(":")
    inner = ""
    start = rest.find("[")
    if start >= 0:
        try:
            details = json.loads(rest[start:])
            node: Any = details[0] if details else {}
            while isinstance(node, dict) and node.get("innererror"):
                node = node["innererror"]
            inner = (node.get("message") or "") if isinstance(node, dict) else ""
        except (ValueError, IndexError, TypeError):
            inner = ""
    return _first_line(f"{code.strip()}: {inner}" if inner else partial, 200)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_rows(conn: Connection, rows: list[dict], *, mark_captured: bool) -> int:
    """Upsert request rows and rebuild the rollups of the deployment-minutes they touch."""
    if not rows:
        return 0
    written = upsert(conn, Request, rows, update=_UPDATE_COLUMNS)
    if mark_captured:
        ids = [r["correlation_id"] for r in rows]
        for i in range(0, len(ids), 1000):
            conn.execute(
                update(Request)
                .where(Request.source == "capture", Request.correlation_id.in_(ids[i : i + 1000]))
                .values(source="both")
            )
    deployments = {r["deployment_id"] for r in rows if r["deployment_id"] is not None}
    if deployments:
        times = [r["time"] for r in rows if r["deployment_id"] is not None]
        rollups.recompute_rollups(
            conn, deployments, min(times), max(times) + timedelta(microseconds=1)
        )
    return written


def link_unlisted(
    conn: Connection, rows: list[dict], lookup: Lookup, now: datetime, tally: Tally
) -> None:
    """Give rows of deployments ARM no longer lists a deployment of their own (recorded as
    deleted), so their history is kept and rolled up like any other."""
    orphans = [r for r in rows if r["deployment_id"] is None]
    if not orphans:
        return
    ids = record_unlisted(
        conn,
        {(r["resource_id"], r["deployment_name"], r["model_name"], "") for r in orphans},
        now,
    )
    lookup.deployments.update(ids)
    for row in orphans:
        row["deployment_id"] = ids.get((row["resource_id"], row["deployment_name"].lower()))
        if row["deployment_id"] is None:
            tally.unknown[row["deployment_name"]] += 1


def adopt_orphans(conn: Connection, lookup: Lookup, resource_ids: Iterable[int]) -> int:
    """Link rows stored without a deployment to deployments discovery has found since."""
    ids = list(resource_ids)
    if not ids:
        return 0
    groups = conn.execute(
        select(
            Request.resource_id,
            Request.deployment_name,
            func.min(Request.time),
            func.max(Request.time),
        )
        .where(Request.deployment_id.is_(None), Request.resource_id.in_(ids))
        .group_by(Request.resource_id, Request.deployment_name)
    ).all()
    adopted = 0
    for resource_id, name, first, last in groups:
        dep_id = lookup.deployments.get((resource_id, (name or "").lower()))
        if dep_id is None:
            continue
        adopted += conn.execute(
            update(Request)
            .where(
                Request.deployment_id.is_(None),
                Request.resource_id == resource_id,
                Request.deployment_name == name,
            )
            .values(deployment_id=dep_id)
        ).rowcount
        rollups.recompute_rollups(conn, [dep_id], first, last + timedelta(microseconds=1))
    return adopted


# ---------------------------------------------------------------------------------------------
# One workspace
# ---------------------------------------------------------------------------------------------

#: Called with the rows (planned, else fetched) of each finished slice.
RowsDone = Callable[[int], None]


@dataclass
class WorkspaceJob:
    """Collect one workspace's request logs over [start, end), slice by slice."""

    ctx: JobContext
    customer_id: str
    resource_ids: list[int]
    start: datetime
    end: datetime
    on_rows: RowsDone | None = None
    tally: Tally = field(default_factory=Tally)

    @property
    def scope(self) -> str:
        return scope_of(self.customer_id)

    def _query(self, client: Any, query: str, start: datetime, end: datetime) -> Any:
        return client.query_workspace(self.customer_id, query, timespan=(start, end))

    def plan_slices(self, client: Any) -> list[Slice]:
        """Slices for the window: one if short, else planned from the per-hour counts."""
        if self.end - self.start <= DIRECT_WINDOW:
            return [Slice(self.start, self.end)]
        answer = read_answer(
            self._query(
                client,
                kql.request_counts_query(self.start, self.end, PLAN_BIN),
                self.start,
                self.end,
            )
        )
        if answer.partial or answer.table is None:
            # No trustworthy counts: hour slices, halved on truncation.
            log.info("%s: count query incomplete (%s); slicing by hour", self.scope, answer.partial)
            return [Slice(a, b) for a, b in _hours(self.start, self.end)]
        index = {str(n): i for i, n in enumerate(answer.table.columns)}
        t_col, n_col = index.get("TimeGenerated"), index.get("n")
        if t_col is None or n_col is None:
            raise MalformedPayload("the count query result lacks TimeGenerated/n")
        counts = []
        for row in answer.table.rows:
            values = list(row)
            try:
                counts.append((_as_datetime(values[t_col]), int(float(values[n_col] or 0))))
            except (MalformedRow, TypeError, ValueError):
                raise MalformedPayload("the count query returned an unreadable row") from None
        return pack_slices(self.start, self.end, counts)

    def begin(self) -> None:
        """Record the run, build the clients and plan the slices (a failure is reported by
        :meth:`execute`). Separate from it so a backfill can total every plan first."""
        self._run = start_run(self.ctx.engine, SOURCE, self.scope, (self.start, self.end))
        self._clients = self.ctx.clients()
        self._failure = ""
        self._slices: list[Slice] = []
        try:
            self._client = self._clients.logs()
            self._slices = self.plan_slices(self._client)
        except Exception as exc:
            self._failure = self._fail(exc)

    @property
    def expected_rows(self) -> int:
        return sum(s.expected or 0 for s in getattr(self, "_slices", []))

    def execute(self) -> ScopeOutcome:
        """Fetch and store the planned slices, then finish the run record."""
        status, error = "failed", self._failure
        if not self._failure:
            try:
                status, error = self._collect()
            except Exception as exc:  # recorded as a failed run; never stops other workspaces
                status, error = "failed", self._fail(exc)
        calls = self._clients.counter.calls
        with self.ctx.engine.begin() as conn:
            self._run.finish(
                conn,
                status=status,
                rows=self.tally.rows,
                api_calls=calls,
                error=error,
                window=(self.start, self.end),
            )
        if status in ("partial", "stopped"):
            log.warning(error)
        return ScopeOutcome(SOURCE, self.scope, status, self.tally.rows, calls, error)

    def run(self) -> ScopeOutcome:
        self.begin()
        return self.execute()

    def _fail(self, exc: BaseException) -> str:
        message = _describe(exc, self.scope)
        log.warning(message)
        log.debug("logs failure detail", exc_info=True)
        return message

    def _collect(self) -> tuple[str, str]:
        client = self._client
        with self.ctx.engine.begin() as conn:
            lookup = Lookup.load(conn)
            adopt_orphans(conn, lookup, self.resource_ids)
            mark_captured = (
                conn.execute(select(Request.id).where(Request.source == "capture").limit(1)).first()
                is not None
            )
        queue = deque(self._slices)
        while queue:
            if self.ctx.stopping():
                # between slices only: every slice before committed whole, with its watermark
                return "stopped", (
                    f"{SOURCE} on {self.scope}: stopped by a signal before "
                    f"{queue[0].start.isoformat()}; the next run resumes from the watermark"
                )
            piece = queue.popleft()
            answer = read_answer(
                self._query(
                    client, kql.request_logs_query(piece.start, piece.end), piece.start, piece.end
                )
            )
            if answer.truncated:
                halves = _halve(piece)
                if halves is not None:
                    log.info("%s: %s..%s truncated; halving", self.scope, piece.start, piece.end)
                    queue.extendleft(reversed(halves))
                    continue
                answer.partial = (
                    f"more than {ROW_LIMIT} rows within {MIN_SLICE} at {piece.start.isoformat()}: "
                    "result truncated"
                )
            rows = parse_table(answer.table, lookup, self.tally)
            complete = not answer.partial
            with self.ctx.engine.begin() as conn:
                link_unlisted(conn, rows, lookup, self.ctx.clock(), self.tally)
                self.tally.rows += write_rows(conn, rows, mark_captured=mark_captured)
                if complete:
                    current = get_watermark(conn, SOURCE, self.scope)
                    if current is None or piece.end > current:
                        set_watermark(conn, SOURCE, self.scope, piece.end)
            if self.on_rows is not None:
                self.on_rows(piece.expected if piece.expected is not None else len(rows))
            if not complete:
                self.tally.partial = (
                    f"partial result for {piece.start.isoformat()}..{piece.end.isoformat()} "
                    f"({_partial_summary(answer.partial)}); kept {len(rows)} row(s), "
                    "watermark held"
                )
                break
        if self.tally.foreign:
            log.debug(
                "%s: %d row(s) of untracked resources/models skipped",
                self.scope,
                self.tally.foreign,
            )
        error = self.tally.error_line()
        if not error:
            return "ok", ""
        return "partial", _first_line(f"{SOURCE} on {self.scope}: {error}", 1000)


def _hours(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    out = []
    t = start
    while t < end:
        nxt = min(end, _floor_to(t, PLAN_BIN) + PLAN_BIN)
        out.append((t, nxt))
        t = nxt
    return out


def _describe(exc: BaseException, scope: str) -> str:
    if isinstance(exc, MalformedPayload):
        return f"{SOURCE} on {scope}: malformed response: {exc}"
    if isinstance(exc, SQLAlchemyError):
        first = _first_line(str(exc), 200)
        return f"{SOURCE} on {scope}: could not store the data: {type(exc).__name__}: {first}"
    return _first_line(describe_azure_error(exc, source=SOURCE, scope=scope), 1000)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def workspaces(ctx: JobContext) -> dict[str, list[int]]:
    """Workspace customer id -> the resources (store ids) that send their logs there."""
    out: dict[str, list[int]] = {}
    with ctx.engine.connect() as conn:
        for rid, customer_id, name in conn.execute(
            select(Resource.id, Resource.workspace_customer_id, Resource.name).order_by(Resource.id)
        ):
            if customer_id:
                out.setdefault(customer_id, []).append(rid)
            else:
                log.info("resource %s has no Log Analytics workspace; its logs are skipped", name)
    return out


def _start_for(
    ctx: JobContext, scope: str, earliest: datetime, requested: datetime | None
) -> datetime:
    with ctx.engine.connect() as conn:
        watermark = get_watermark(conn, SOURCE, scope)
    if watermark is None:
        start = requested if requested is not None else earliest
    else:
        # from the watermark even when it is older than ``requested``: skipping ahead would
        # leave a gap inside what the store claims to have collected
        start = watermark - OVERLAP
    return max(start, earliest)


def _fill_back(
    ctx: JobContext, customer_id: str, resource_ids: list[int], wanted: datetime
) -> list[WorkspaceJob]:
    """Jobs for what lies between ``wanted`` and the start of the collected stretch, newest
    first, one ``DIRECT_WINDOW`` each (one query, no count): each finished job moves the
    stretch's start back, so a killed backfill resumes there (:func:`coverage_start`)."""
    scope = scope_of(customer_id)
    with ctx.engine.connect() as conn:
        watermark = get_watermark(conn, SOURCE, scope)
        low = coverage_start(conn, SOURCE, scope, watermark)
    if low is None:
        return []
    jobs = []
    end = low
    while end > wanted:
        begin = max(wanted, end - DIRECT_WINDOW)
        jobs.append(WorkspaceJob(ctx, customer_id, resource_ids, begin, end))
        end = begin
    return jobs


def run(ctx: JobContext) -> list[ScopeOutcome]:
    """One incremental cycle: each workspace from its watermark (minus the overlap) to now."""
    now = ctx.clock()
    earliest = now - timedelta(days=ctx.settings.retention_days)
    outcomes = []
    for customer_id, resource_ids in workspaces(ctx).items():
        if ctx.stopping():
            break
        start = _start_for(ctx, scope_of(customer_id), earliest, None)
        if start >= now:
            continue
        job = WorkspaceJob(ctx, customer_id, resource_ids, start, now)
        outcomes.append(job.run())
    return outcomes


def backfill(
    ctx: JobContext,
    start: datetime,
    progress: Callable[[int, int], None] | None = None,
) -> list[ScopeOutcome]:
    """Fill [start, now) for every workspace, resuming from the watermarks.

    ``progress(done_rows, total_rows)``: the total comes from the per-hour counts of each
    workspace's window (one count query per workspace longer than ``DIRECT_WINDOW``), so it is
    known before rows arrive; rows of uncounted windows add to both as they come.
    """
    now = ctx.clock()
    earliest = now - timedelta(days=ctx.settings.retention_days)
    jobs = []
    back: list[WorkspaceJob] = []
    for customer_id, resource_ids in workspaces(ctx).items():
        begin = _start_for(ctx, scope_of(customer_id), earliest, start)
        back.extend(_fill_back(ctx, customer_id, resource_ids, max(start, earliest)))
        if begin < now:
            jobs.append(WorkspaceJob(ctx, customer_id, resource_ids, begin, now))
    for job in jobs:
        job.begin()
    total = sum(job.expected_rows for job in jobs)
    done = 0
    outcomes = []

    def tick(n: int) -> None:
        nonlocal done, total
        done += n
        total = max(total, done)
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    for job in jobs:
        job.on_rows = tick
        outcomes.append(job.execute())
    failed: set[str] = set()
    for job in back:  # newest first per workspace
        if ctx.stopping():
            break
        if job.scope in failed:
            continue
        job.on_rows = tick
        outcome = job.run()
        outcomes.append(outcome)
        if outcome.status != "ok":
            # failed, or partial (held back): going further back would leave a hole in the
            # stretch the run records describe; the next backfill retries from here
            failed.add(job.scope)
    return outcomes

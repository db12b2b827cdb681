"""What happened to request ``req_…`` / apim id ``…``? The store first, then Azure directly.

Search order, and why:

1. **The store** (``requests``), by either id: what the collector joined (logs + capture).
2. **Capture spools** (the settings' ``capture_spools``), only for an Anthropic ``req_…`` id the
   store lacks: Azure's logs never see Anthropic's id, so a spool not ingested yet is the only
   place that maps it to an apim id.
3. **Log Analytics, live** (with ``--live``, or when 1–2 found nothing), by apim id over a
   bounded window (default: the retention window), one query per workspace the store knows, from
   a fixed template where the id enters only as :func:`collector.kql.escape_string_literal`.
   This is the one place a reader calls Azure (DESIGN §2); it writes nothing (the logs job will).

An id is validated before anything runs: ``req_`` + 8–60 letters/digits, or a canonical UUID
(8-4-4-4-12 hex). Anything else — quotes, pipes, newlines, unicode — is refused with one line.

The context around a request is read from the store's latency rollups and request rows: its
deployment's requests/min, error and 429 rates and 2xx p95 in the ±15 minutes around it versus
the 24 hours before (the dashboard's Request lookup page uses the same baseline), and the other
failures in the same minute on the same deployment or resource.
"""

from __future__ import annotations

import json
import mmap
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, and_, or_, select

from collector import kql, rollups, spend
from collector.jobs import capture as capture_job
from collector.jobs import logs as logs_job
from collector.runs import utcnow
from models.settings import Settings
from models.tables import Deployment, LatencyRollup, Price, Request, Resource

REQUEST_ID = re.compile(r"req_[A-Za-z0-9]{8,60}")
APIM_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
AROUND = timedelta(minutes=15)
USUAL = timedelta(hours=24)
#: Other failures listed per request.
OTHER_FAILURES = 20
#: The live query's end is this far past now (TimeGenerated is when the response ended).
_LIVE_SLACK = timedelta(minutes=10)

#: Error class and the hint that goes with it, by status (DESIGN §8: what to do).
HINTS: dict[str, tuple[str, str]] = {
    "400": ("invalid request", "the request body was refused (max_tokens, messages, params)."),
    "401": (
        "authentication",
        "the api-key or Entra ID token is wrong, expired or for another audience "
        "(data-plane tokens need https://cognitiveservices.azure.com).",
    ),
    "403": (
        "authorisation",
        "the caller lacks a role on the resource (Cognitive Services User / Azure AI User) "
        "or network rules block it.",
    ),
    "404": (
        "not found",
        "the deployment name (the request's model) does not exist on this resource "
        "(deleted, renamed, typo), or the path is not served by Foundry.",
    ),
    "408": ("timeout", "the request took too long; retry, or stream long generations."),
    "413": ("too large", "the request body exceeds the size limit; shorten the prompt."),
    "429": (
        "throttled",
        "the deployment's rate limit was hit: back off honouring Retry-After, spread load, or "
        "raise the quota / add deployments.",
    ),
    "4xx": ("client error", "see the response body's error type and message."),
    "5xx": (
        "service error",
        "transient on the service side: retry with backoff; if it persists, open a support "
        "case with the bundle below.",
    ),
    "529": ("overloaded", "the model is overloaded: retry with backoff, or try later."),
    "none": (
        "no response",
        "the call never got an HTTP answer (timeout, DNS, TLS, refused connection).",
    ),
}


class InvalidId(ValueError):
    """Not a request id; the message is one line and never echoes control characters."""


@dataclass(frozen=True)
class RequestKey:
    kind: str  # "request-id" | "apim-request-id"
    value: str


def parse_id(text: Any) -> RequestKey:
    """``req_…`` (Anthropic's request-id) or a UUID (Azure's apim-request-id), else InvalidId."""
    if not isinstance(text, str):
        raise InvalidId("the id must be text")
    value = text.strip()
    if REQUEST_ID.fullmatch(value):
        return RequestKey("request-id", value)
    if APIM_ID.fullmatch(value):
        return RequestKey("apim-request-id", value.lower())
    shown = ascii(value[:40]) + ("..." if len(value) > 40 else "")
    raise InvalidId(
        f"{shown} is not a request id: expected Anthropic's request-id (req_ followed by "
        "letters and digits) or Azure's apim-request-id (a UUID like "
        "0f8fad5b-d9cb-469f-a165-70867728950e)"
    )


def error_class(status: int | None) -> tuple[str, str] | None:
    """(class, hint) for a failing status; None for a success."""
    if status is None:
        return HINTS["none"]
    if status < 400:
        return None
    key = str(status)
    if key in HINTS:
        return HINTS[key]
    return HINTS["5xx"] if status >= 500 else HINTS["4xx"]


def correlation_query(correlation_id: str, start: datetime, end: datetime) -> str:
    """The live template: RequestResponse rows with this CorrelationId in [start, end).

    ``correlation_id`` may be any text: it enters only as an escaped string literal.
    """
    return (
        "AzureDiagnostics\n"
        f"| where TimeGenerated >= {kql.datetime_literal(start)}"
        f" and TimeGenerated < {kql.datetime_literal(end)}\n"
        '| where Category == "RequestResponse"'
        ' and ResourceProvider == "MICROSOFT.COGNITIVESERVICES"\n'
        f"| where CorrelationId =~ {kql.escape_string_literal(correlation_id)}\n"
        "| project " + ", ".join(kql.REQUEST_LOG_COLUMNS) + "\n"
        "| take 10"
    )


# ---------------------------------------------------------------------------------- report
@dataclass
class Found:
    """One request as shown: its row (``requests`` columns + names) and where it came from."""

    row: dict[str, Any]
    origin: list[str]
    context: dict[str, Any] | None = None

    @property
    def status(self) -> int | None:
        return self.row.get("status_code")


@dataclass
class Report:
    key: RequestKey
    found: list[Found] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": {"id": self.key.value, "kind": self.key.kind},
            "found": bool(self.found),
            "searched": self.searched,
            "notes": self.notes,
            "requests": [_as_json(f) for f in self.found],
        }


_ROW_FIELDS = (
    "correlation_id",
    "request_id",
    "time",
    "resource_id",
    "deployment_id",
    "deployment_name",
    "model_name",
    "operation_name",
    "status_code",
    "duration_ms",
    "ttft_ms",
    "stream",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "caller_ip",
    "source",
)
#: Columns Azure's logs own (a live row refreshes them on a stored one).
_LOG_FIELDS = tuple(logs_job._UPDATE_COLUMNS)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _as_json(found: Found) -> dict[str, Any]:
    row = found.row
    cls = error_class(row.get("status_code"))
    return _plain(
        {
            "request_id": row.get("request_id") or None,
            "apim_request_id": row.get("correlation_id"),
            "time": row.get("time"),
            "resource": row.get("resource") or None,
            "resource_arm_id": row.get("resource_arm_id") or None,
            "region": row.get("region") or None,
            "deployment": row.get("deployment_name") or None,
            "model": row.get("model_name") or None,
            "model_version": row.get("model_version") or None,
            "operation": row.get("operation_name") or None,
            "status": row.get("status_code"),
            "error_class": cls[0] if cls else None,
            "hint": cls[1] if cls else None,
            "duration_ms": row.get("duration_ms"),
            "ttft_ms": row.get("ttft_ms"),
            "stream": row.get("stream"),
            "tokens": {
                "input": row.get("input_tokens"),
                "output": row.get("output_tokens"),
                "cache_read": row.get("cache_read_tokens"),
                "cache_write_5m": row.get("cache_write_5m_tokens"),
                "cache_write_1h": row.get("cache_write_1h_tokens"),
            },
            "estimated_cost": row.get("estimated_cost"),
            "currency": row.get("currency") or None,
            "caller": row.get("caller_ip") or None,
            "source": row.get("source"),
            "found_in": found.origin,
            "context": found.context,
            "support_bundle": support_bundle(found),
        }
    )


# ------------------------------------------------------------------------------- searching
def _named(conn: Any, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add resource name/region/ARM id and the deployment's model version to rows."""
    out = []
    for row in rows:
        row = dict(row)
        if row.get("resource_id") is not None:
            res = conn.execute(
                select(Resource.name, Resource.location, Resource.arm_id).where(
                    Resource.id == row["resource_id"]
                )
            ).first()
            if res is not None:
                row["resource"], row["region"], row["resource_arm_id"] = res
        if row.get("deployment_id") is not None:
            dep = conn.execute(
                select(Deployment.model_name, Deployment.model_version).where(
                    Deployment.id == row["deployment_id"]
                )
            ).first()
            if dep is not None:
                row["model_name"] = row.get("model_name") or dep[0]
                row["model_version"] = dep[1]
        out.append(row)
    return out


def search_store(conn: Any, key: RequestKey) -> list[dict[str, Any]]:
    columns = [getattr(Request, name) for name in _ROW_FIELDS]
    if key.kind == "request-id":
        where = Request.request_id == key.value
    else:
        where = or_(
            Request.correlation_id == key.value, Request.correlation_id == key.value.upper()
        )
    rows = conn.execute(select(*columns).where(where).order_by(Request.time).limit(20)).all()
    return _named(conn, (dict(r._mapping) for r in rows))


def search_spools(conn: Any, patterns: list[str], key: RequestKey) -> list[dict[str, Any]]:
    """Records with this id in the capture spools (newest file first), as request rows."""
    needle = json.dumps(key.value).encode()
    names = capture_job.Names.load(conn)
    found: dict[str, dict[str, Any]] = {}
    for base in capture_job.spool_paths(patterns):
        for path in reversed(capture_job.spool_files(base)):
            for record in _grep(path, needle):
                try:
                    row = capture_job.to_row(record, names)
                except ValueError:
                    continue
                if row is not None:
                    found.setdefault(row["correlation_id"], row)
    return _named(conn, found.values())


def _grep(path: str, needle: bytes) -> Iterable[Any]:
    """JSON records of the lines of ``path`` containing ``needle`` (a C-speed mmap search)."""
    try:
        with open(path, "rb") as fh:
            if not fh.seek(0, 2):
                return
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                pos = mm.find(needle)
                while pos >= 0:
                    start = mm.rfind(b"\n", 0, pos) + 1
                    end = mm.find(b"\n", pos)
                    if end < 0:
                        return
                    try:
                        record = json.loads(mm[start:end])
                    except ValueError:
                        record = None
                    if record is not None:
                        yield record
                    pos = mm.find(needle, end)
    except OSError:
        return


def search_live(
    settings: Settings,
    engine: Engine,
    credential: Any,
    correlation_id: str,
    *,
    start: datetime,
    end: datetime,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Log Analytics rows with this CorrelationId over [start, end) in every known workspace.

    Returns (rows parsed like the logs job parses them, error lines). ``correlation_id`` may be
    any text (it is escaped), so this is safe to call with unvalidated input too.
    """
    from collector.azure import AzureClients
    from collector.errors import describe_azure_error
    from collector.jobs import logs as logs_job

    with engine.connect() as conn:
        workspaces = sorted(
            {cid for (cid,) in conn.execute(select(Resource.workspace_customer_id)) if cid}
        )
        lookup = logs_job.Lookup.load(conn)
    if not workspaces:
        return [], [
            "no Log Analytics workspace known: run discovery "
            "(foundry-watch collect --once --source discovery) or set workspace_overrides"
        ]
    query = correlation_query(correlation_id, start, end)
    client = AzureClients(settings, credential).logs()
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for customer_id in workspaces:
        scope = f"workspace/{customer_id}"
        try:
            result = client.query_workspace(customer_id, query, timespan=(start, end))
            answer = logs_job.read_answer(result)
            if answer.partial:
                errors.append(f"live search on {scope}: partial result ({answer.partial[:200]})")
            rows.extend(logs_job.parse_table(answer.table, lookup, logs_job.Tally()))
        except Exception as exc:
            errors.append(describe_azure_error(exc, source="live search", scope=scope))
    return rows, errors


# -------------------------------------------------------------------------------- context
def _window_stats(conn: Any, deployment_id: int, start: datetime, end: datetime) -> dict:
    by_class: dict[str, int] = {}
    ok_hists = []
    first: datetime | None = None
    for bucket, cls, count, hist in conn.execute(
        select(
            LatencyRollup.bucket,
            LatencyRollup.status_class,
            LatencyRollup.count,
            LatencyRollup.histogram,
        ).where(
            LatencyRollup.deployment_id == deployment_id,
            LatencyRollup.bucket >= start,
            LatencyRollup.bucket < end,
        )
    ):
        first = bucket if first is None or bucket < first else first
        by_class[cls] = by_class.get(cls, 0) + int(count)
        if cls == "2xx":
            ok_hists.append(hist)
    total = sum(by_class.values())
    failed = sum(by_class.get(c, 0) for c in ("4xx", "429", "5xx"))
    # A minute without a rollup is either quiet or not collected; before the first one in the
    # window it is taken as not collected (a store younger than the window), so a new store's
    # baseline is not diluted by hours it never saw.
    covered_from = max(start, first) if first is not None else start
    minutes = (end - covered_from).total_seconds() / 60
    p95 = rollups.percentiles(rollups.merge(ok_hists), (95,))[95]
    return {
        "start": start,
        "end": end,
        "requests": total,
        "per_minute": round(total / minutes, 3) if minutes else None,
        "error_rate": round(failed / total, 4) if total else None,
        "throttle_rate": round(by_class.get("429", 0) / total, 4) if total else None,
        "p95_ms": round(p95, 1) if p95 is not None else None,
    }


def request_context(conn: Any, row: dict[str, Any]) -> dict[str, Any] | None:
    """The deployment ±15 min vs the 24 h before; other failures in the same minute."""
    at: datetime | None = row.get("time")
    if at is None:
        return None
    minute = rollups.floor_minute(at)
    out: dict[str, Any] = {}
    if row.get("deployment_id") is not None:
        start, end = minute - AROUND, minute + AROUND + timedelta(minutes=1)
        out["around"] = _window_stats(conn, row["deployment_id"], start, end)
        out["usual"] = _window_stats(conn, row["deployment_id"], start - USUAL, start)
    same_place = []
    if row.get("deployment_id") is not None:
        same_place.append(Request.deployment_id == row["deployment_id"])
    if row.get("resource_id") is not None:
        same_place.append(Request.resource_id == row["resource_id"])
    if same_place:
        others = conn.execute(
            select(
                Request.time,
                Request.deployment_name,
                Request.status_code,
                Request.correlation_id,
                Request.request_id,
            )
            .where(
                and_(
                    Request.time >= minute,
                    Request.time < minute + timedelta(minutes=1),
                    Request.status_code >= 400,
                    Request.correlation_id != row["correlation_id"],
                    or_(*same_place),
                )
            )
            .order_by(Request.time)
            .limit(OTHER_FAILURES + 1)
        ).all()
        out["minute"] = minute
        out["other_failures"] = [
            {
                "time": t,
                "deployment": name,
                "status": status,
                "apim_request_id": cid,
                "request_id": rid or None,
            }
            for t, name, status, cid, rid in others[:OTHER_FAILURES]
        ]
        out["other_failures_truncated"] = len(others) > OTHER_FAILURES
    return out or None


def _price(conn: Any, row: dict[str, Any]) -> None:
    """Estimated cost of the request's tokens at the ``prices`` table's list price."""
    tokens = {
        "input": row.get("input_tokens"),
        "output": row.get("output_tokens"),
        "cache_read": row.get("cache_read_tokens"),
        "cache_write_5m": row.get("cache_write_5m_tokens"),
        "cache_write_1h": row.get("cache_write_1h_tokens"),
    }
    if all(v is None for v in tokens.values()):
        return
    model = spend.normalize_model(row.get("model_name") or "")
    price = next(
        (
            p
            for p in conn.execute(select(Price.__table__))
            if spend.normalize_model(p.model_name) == model
        ),
        None,
    )
    if price is None:
        return
    cost = spend.price_tokens({k: int(v or 0) for k, v in tokens.items()}, price)
    row["estimated_cost"] = cost.quantize(Decimal("0.000001"))
    row["currency"] = price.currency


# ---------------------------------------------------------------------------------- lookup
def lookup(
    settings: Settings,
    engine: Engine,
    text: str,
    *,
    live: bool = False,
    window_days: int | None = None,
    credential: Callable[[], Any] | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Report:
    """Find a request by either id (raises :class:`InvalidId` for a malformed one).

    ``credential``: a factory for the Azure credential, called only if Log Analytics is asked.
    """
    key = parse_id(text)
    report = Report(key)
    with engine.connect() as conn:
        rows = search_store(conn, key)
        report.searched.append("store")
        found = [Found(r, ["store"]) for r in rows]
        spools = [str(p) for p in (getattr(settings, "capture_spools", None) or [])]
        if not found and key.kind == "request-id" and spools:
            report.searched.append("capture spools")
            found = [
                Found(r, ["capture spool (not ingested yet)"])
                for r in search_spools(conn, spools, key)
            ]
    apim_ids = [key.value] if key.kind == "apim-request-id" else []
    apim_ids += [f.row["correlation_id"] for f in found if f.row["correlation_id"] not in apim_ids]
    if live or not any("store" in f.origin for f in found):  # i.e. the store lacks it
        if apim_ids:
            days = window_days or settings.retention_days
            now = clock()
            start, end = now - timedelta(days=days), now + _LIVE_SLACK
            report.searched.append(f"Log Analytics (live, last {days} day(s))")
            cred = credential() if credential is not None else _default_credential(settings)
            for apim in apim_ids:
                rows, errors = search_live(settings, engine, cred, apim, start=start, end=end)
                report.notes.extend(errors)
                with engine.connect() as conn:
                    _merge_live(found, _named(conn, rows))
        elif key.kind == "request-id":
            report.notes.append(
                "Azure's logs do not carry Anthropic's request-id; without a stored or spooled "
                "capture record, search by the apim-request-id (a UUID) from the same response"
            )
    with engine.connect() as conn:
        for f in found:
            _price(conn, f.row)
            f.context = request_context(conn, f.row)
    report.found = found
    if not found:
        report.notes.append(_not_found(key, settings, window_days))
    return report


def _default_credential(settings: Settings) -> Any:
    from collector.azure import make_credential

    return make_credential(settings)


def _merge_live(found: list[Found], rows: list[dict[str, Any]]) -> None:
    for live_row in rows:
        match = next(
            (
                f
                for f in found
                if f.row["correlation_id"].lower() == live_row["correlation_id"].lower()
            ),
            None,
        )
        if match is None:
            found.append(Found({**live_row, "source": "logs"}, ["Log Analytics (live)"]))
            continue
        for name in (*_LOG_FIELDS, "resource", "region", "resource_arm_id", "model_version"):
            if live_row.get(name) not in (None, ""):
                match.row[name] = live_row[name]
        if match.row.get("source") == "capture":
            match.row["source"] = "both"
        match.origin.append("Log Analytics (live)")


def _not_found(key: RequestKey, settings: Settings, window_days: int | None) -> str:
    days = window_days or settings.retention_days
    return (
        f"no request with {key.kind} {key.value} in the store"
        + (" or the capture spools" if key.kind == "request-id" else "")
        + (f" or Log Analytics (last {days} day(s))" if key.kind == "apim-request-id" else "")
        + ": it may be older than the window, not logged yet (Log Analytics ingests minutes "
        "late), from a resource foundry-watch does not watch, or mistyped"
    )


# -------------------------------------------------------------------------------- printing
def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def support_bundle(found: Found) -> str:
    """Both ids, UTC time, resource, region, deployment, status: ready to paste in a ticket."""
    row = found.row
    return "\n".join(
        [
            f"request-id: {row.get('request_id') or 'unknown (not captured)'}",
            f"apim-request-id: {row.get('correlation_id')}",
            f"time (UTC): {_when(row.get('time'))}",
            f"resource: {row.get('resource') or 'unknown'}"
            + (f" ({row['resource_arm_id']})" if row.get("resource_arm_id") else ""),
            f"region: {row.get('region') or 'unknown'}",
            f"deployment: {row.get('deployment_name') or 'unknown'}"
            + (f" (model {row['model_name']})" if row.get("model_name") else ""),
            f"status: {row.get('status_code')}",
        ]
    )


def render_text(report: Report) -> str:
    """The human form: one block per request, its context, and the support bundle."""
    lines: list[str] = []
    for found in report.found:
        lines += _render_one(found)
        lines.append("")
    if not report.found:
        lines.append(f"not found: {report.key.kind} {report.key.value}")
    lines.append("searched: " + ", ".join(report.searched))
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def _render_one(found: Found) -> list[str]:
    row = found.row
    status = row.get("status_code")
    cls = error_class(status)
    stream = {True: "streaming", False: "non-streaming"}.get(row.get("stream"), "")
    model = row.get("model_name") or "?"
    if row.get("model_version"):
        model += f" v{row['model_version']}"
    tokens = [
        f"in {_num(row.get('input_tokens'))}",
        f"out {_num(row.get('output_tokens'))}",
        f"cache read {_num(row.get('cache_read_tokens'))}",
        f"cache write 5m/1h {_num(row.get('cache_write_5m_tokens'))}/"
        f"{_num(row.get('cache_write_1h_tokens'))}",
    ]
    cost = row.get("estimated_cost")
    source = {
        "logs": "Azure logs",
        "capture": "client capture",
        "both": "Azure logs + client capture",
    }.get(row.get("source"), row.get("source") or "?")
    out = [
        f"request-id       {row.get('request_id') or '- (Azure logs carry only the apim id)'}",
        f"apim-request-id  {row.get('correlation_id')}",
        f"time             {_when(row.get('time'))}",
        f"resource         {row.get('resource') or '?'} ({row.get('region') or '?'})",
        f"deployment       {row.get('deployment_name') or '?'} -> {model}",
        f"operation        {row.get('operation_name') or '-'}" + (f", {stream}" if stream else ""),
        f"status           {status}" + (f" {cls[0]}: {cls[1]}" if cls else " ok"),
        f"duration         {_ms(row.get('duration_ms'))} "
        + ("(client-observed)" if row.get("source") == "capture" else "(Azure, server-side)")
        + (
            f"; time to first token {_ms(row['ttft_ms'])} (client-observed)"
            if row.get("ttft_ms") is not None
            else ""
        ),
        f"tokens           {', '.join(tokens)}"
        + (f"  ~ {cost:.6f} {row.get('currency', '')} estimated" if cost is not None else ""),
        f"caller           {row.get('caller_ip') or '-'}",
        f"source           {source}; found in {', '.join(found.origin)}",
    ]
    ctx = found.context or {}
    if "around" in ctx:
        around, usual = ctx["around"], ctx["usual"]
        out += [
            "",
            "deployment around it (±15 min) vs the 24 h before:",
            f"  requests/min   {_num(around['per_minute']):>10}  vs {_num(usual['per_minute'])}",
            f"  error rate     {_pct(around['error_rate']):>10}  vs {_pct(usual['error_rate'])}",
            f"  429 rate       {_pct(around['throttle_rate']):>10}  vs "
            f"{_pct(usual['throttle_rate'])}",
            f"  p95 (2xx)      {_ms(around['p95_ms']):>10}  vs {_ms(usual['p95_ms'])}",
        ]
    if "minute" in ctx:
        others = ctx["other_failures"]
        minute = ctx["minute"].strftime("%H:%M")
        if others:
            more = " (first 20)" if ctx.get("other_failures_truncated") else ""
            out += ["", f"other failures in {minute} UTC on this deployment/resource{more}:"]
            out += [
                f"  {o['time'].strftime('%H:%M:%S')}  {o['status']}  {o['deployment'] or '?'}  "
                f"apim {o['apim_request_id']}" + (f"  {o['request_id']}" if o["request_id"] else "")
                for o in others
            ]
        else:
            out += ["", f"no other failures in {minute} UTC on this deployment/resource"]
    out += ["", "support bundle (paste into a support case):"]
    out += ["  " + line for line in support_bundle(found).splitlines()]
    return out

"""Capture spool -> ``requests``: exact rows, idempotence, the join with Azure's log rows (both
orders), incremental reads, rotation, partial and malformed lines. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import pytest
from sqlalchemy import delete, select

from collector import capture, rollups
from collector.jobs import capture as capture_job
from collector.jobs import logs
from collector.jobs.base import JobContext
from collector.runs import get_watermark, set_watermark
from models.tables import CollectorRun, Deployment, LatencyRollup, Request, Resource, Watermark
from tests.incident.conftest import MSG
from tests.incident.helpers import records

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ------------------------------------------------------------------------------- helpers
def traffic(client: anthropic.AnthropicFoundry, faults: Any) -> dict[str, dict[str, Any]]:
    """200 (plain and streamed), 429, 401, 404: apim id -> what the SDK saw."""
    seen: dict[str, dict[str, Any]] = {}
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=60, messages=MSG
    )
    seen[raw.headers["apim-request-id"]] = {"status": 200, "usage": raw.parse().usage}
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=60, messages=MSG) as s:
        final = s.get_final_message()
        seen[s.response.headers["apim-request-id"]] = {"status": 200, "usage": final.usage}
    faults.add(kind="throttle", endpoint="dataplane", retry_after_s=3)
    for exc_type, call in (
        (anthropic.RateLimitError, lambda c: c),
        (anthropic.AuthenticationError, lambda c: c.with_options(api_key="0" * 32)),
    ):
        with pytest.raises(exc_type) as err:
            call(client).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=MSG)
        seen[err.value.response.headers["apim-request-id"]] = {"status": err.value.status_code}
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="no-such-deployment", max_tokens=5, messages=MSG)
    seen[err.value.response.headers["apim-request-id"]] = {"status": 404}
    return seen


def dump(ctx: JobContext) -> tuple[list[tuple], list[tuple]]:
    with ctx.engine.connect() as conn:
        reqs = [tuple(r) for r in conn.execute(select(Request).order_by(Request.correlation_id))]
        rolls = [
            tuple(r)
            for r in conn.execute(
                select(LatencyRollup).order_by(
                    LatencyRollup.deployment_id, LatencyRollup.bucket, LatencyRollup.status_class
                )
            )
        ]
    return reqs, rolls


def stored(ctx: JobContext, apim_ids) -> dict[str, Any]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(Request.__table__).where(Request.correlation_id.in_(list(apim_ids)))
        )
        return {r.correlation_id: r for r in rows}


def logs_cycle(ctx: JobContext, minutes: int = 20) -> None:
    """The logs job over the last minutes only (the emulator's 30 days are not needed here)."""
    since = ctx.clock() - timedelta(minutes=minutes)
    with ctx.engine.begin() as conn:
        for customer_id in logs.workspaces(ctx):
            set_watermark(conn, "logs", logs.scope_of(customer_id), since)
    outcomes = logs.run(ctx)
    assert outcomes and all(o.status in ("ok", "partial") for o in outcomes), outcomes


def truth(emulator: Any, apim: str) -> Any:
    (rec,) = [r for r in emulator.world.live_records() if r.correlation_id == apim]
    return rec


# ------------------------------------------------------------------- against the emulator
def test_ingest_then_logs_join(
    collector_ctx: JobContext, emulator, make_client, spool: Path, faults, resource: str
) -> None:
    seen = traffic(make_client(spool), faults)
    recs = {r["apim_request_id"]: r for r in records(spool)}
    assert set(recs) == set(seen)

    outcome = capture_job.ingest(collector_ctx, str(spool))
    assert outcome.status == "ok" and outcome.rows == len(seen), outcome
    rows = stored(collector_ctx, seen)
    assert set(rows) == set(seen)
    with collector_ctx.engine.connect() as conn:
        res_id = conn.execute(select(Resource.id).where(Resource.name == resource)).scalar_one()
        deps = dict(
            conn.execute(
                select(Deployment.name, Deployment.id).where(Deployment.resource_id == res_id)
            ).all()
        )
    for apim, row in rows.items():
        rec, sdk = recs[apim], seen[apim]
        assert row.source == "capture" and row.request_id == rec["request_id"]
        assert row.status_code == sdk["status"] == rec["status"]
        assert row.resource_id == res_id
        assert row.deployment_id == deps.get(rec["deployment"])  # None for the 404
        assert row.duration_ms == pytest.approx(rec["latency_ms"])
        assert row.time == datetime.fromisoformat(rec["time"].replace("Z", "+00:00"))
        usage = sdk.get("usage")
        if usage is None:
            assert row.input_tokens is None and row.output_tokens is None
        else:
            assert (row.input_tokens, row.output_tokens) == (
                usage.input_tokens,
                usage.output_tokens,
            )
            assert row.cache_read_tokens == usage.cache_read_input_tokens
            assert row.cache_write_5m_tokens == usage.cache_creation.ephemeral_5m_input_tokens
        assert (row.ttft_ms is not None) == (rec.get("stream") is True and sdk["status"] == 200)

    # Idempotent: the same spool again (from its watermark, and from scratch) changes nothing.
    before = dump(collector_ctx)
    assert capture_job.ingest(collector_ctx, str(spool)).status == "ok"
    with collector_ctx.engine.begin() as conn:
        conn.execute(delete(Watermark).where(Watermark.source == "capture"))
    assert capture_job.ingest(collector_ctx, str(spool)).rows == len(seen)
    assert dump(collector_ctx) == before

    # The logs job finds Azure's rows: joined, Azure's columns win, capture's columns stay.
    logs_cycle(collector_ctx)
    joined = stored(collector_ctx, seen)
    for apim, row in joined.items():
        if seen[apim]["status"] == 404:  # no deployment: Azure logs no such call
            assert row.source == "capture"
            continue
        t = truth(emulator, apim)
        assert row.source == "both"
        assert row.duration_ms == t.duration_ms and row.status_code == t.status
        assert row.operation_name == t.operation_name and row.caller_ip == t.caller_ip
        assert row.request_id == recs[apim]["request_id"] == t.request_id
        assert row.input_tokens == (t.input_tokens if t.status == 200 else None)
    # ...and a capture re-read after that keeps Azure's columns.
    after_logs = dump(collector_ctx)
    with collector_ctx.engine.begin() as conn:
        conn.execute(delete(Watermark).where(Watermark.source == "capture"))
    capture_job.ingest(collector_ctx, str(spool))
    assert dump(collector_ctx) == after_logs
    _rollups_match_requests(collector_ctx)


def test_logs_first_then_capture(
    collector_ctx: JobContext, emulator, make_client, spool: Path, faults
) -> None:
    seen = traffic(make_client(spool), faults)
    logs_cycle(collector_ctx)
    logged = {a: r for a, r in stored(collector_ctx, seen).items()}
    assert all(r.source == "logs" for r in logged.values())
    assert len(logged) == len(seen) - 1  # not the 404
    recs = {r["apim_request_id"]: r for r in records(spool)}  # waits for the spool writer
    capture_job.ingest(collector_ctx, str(spool))
    rows = stored(collector_ctx, seen)
    for apim, row in rows.items():
        if apim not in logged:
            assert row.source == "capture"
            continue
        before = logged[apim]
        assert row.source == "both" and row.request_id == recs[apim]["request_id"]
        for column in logs._UPDATE_COLUMNS:
            assert getattr(row, column) == getattr(before, column), column
    _rollups_match_requests(collector_ctx)


def test_run_uses_the_configured_spools(collector_ctx: JobContext, tmp_path: Path) -> None:
    (idle,) = capture_job.run(collector_ctx)  # nothing configured: a recorded, explained skip
    assert idle.status == "skipped" and "FOUNDRY_WATCH_CAPTURE_SPOOLS" in idle.error
    for name in ("a.jsonl", "b.jsonl"):
        _write(tmp_path / name, [_record(i) for i in range(3)])
    (tmp_path / "a.jsonl.1").write_text("")  # a rotation is not a spool of its own
    settings = collector_ctx.settings.model_copy(
        update={"capture_spools": [str(tmp_path / "*.jsonl")]}
    )
    ctx = JobContext(settings, collector_ctx.engine, collector_ctx.credential, collector_ctx.clock)
    outcomes = capture_job.run(ctx)
    assert sorted(o.scope for o in outcomes) == [
        f"spool/{tmp_path / 'a.jsonl'}",
        f"spool/{tmp_path / 'b.jsonl'}",
    ]
    assert all(o.status == "ok" and o.rows == 3 for o in outcomes)


# ------------------------------------------------------------------------ spool reading
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def _record(i: int, **extra: Any) -> dict[str, Any]:
    at = T0 + timedelta(seconds=i)
    return {
        "v": 1,
        "time": at.isoformat().replace("+00:00", "Z"),
        "logged": (at + timedelta(seconds=1)).isoformat().replace("+00:00", "Z"),
        "resource": "nowhere",
        "deployment": "d",
        "status": 200,
        "latency_ms": 10.0 + i,
        "request_id": f"req_{i:012d}",
        "apim_request_id": str(uuid.UUID(int=i + 1)),
        "usage": {"input_tokens": i, "output_tokens": 1},
        **extra,
    }


def _write(path: Path, recs: list[dict], tail: str = "") -> None:
    with path.open("a") as fh:
        for rec in recs:
            fh.write(json.dumps(rec) + "\n")
        fh.write(tail)


def test_rotated_files_partial_line_and_malformed(collector_ctx: JobContext, tmp_path: Path):
    base = tmp_path / "fw.jsonl"
    _write(Path(f"{base}.2"), [_record(i) for i in range(0, 5)])
    _write(Path(f"{base}.1"), [_record(i) for i in range(5, 10)])
    half = json.dumps(_record(12))
    _write(
        base,
        [_record(10), _record(11, status=None, apim_request_id="")],  # a failed attempt
        tail="{not json\n" + json.dumps({"v": 9}) + "\n" + half[:20],
    )
    first = capture_job.ingest(collector_ctx, str(base))
    assert first.status == "partial" and first.rows == 11, first
    assert "2 malformed spool line(s)" in first.error
    with collector_ctx.engine.connect() as conn:
        count = len(conn.execute(select(Request.id)).all())
        wm = get_watermark(conn, "capture", capture_job.scope_of(str(base)))
    assert count == 11 and wm == T0 + timedelta(seconds=12)  # up to record 11's logged time
    with base.open("a") as fh:  # the writer finishes its line
        fh.write(half[20:] + "\n")
    second = capture_job.ingest(collector_ctx, str(base))
    assert second.rows >= 1
    with collector_ctx.engine.connect() as conn:
        ids = {r for (r,) in conn.execute(select(Request.request_id))}
        runs = conn.execute(select(CollectorRun.status).where(CollectorRun.job == "capture")).all()
    assert ids == {f"req_{i:012d}" for i in (*range(11), 12)}
    assert [s for (s,) in runs] == ["partial", "ok"]  # the malformed lines are behind it now


def test_incremental_read_skips_what_is_behind_the_watermark(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    _write(path, [_record(i) for i in range(20_000)])
    since = T0 + timedelta(seconds=15_001)  # logged time of record 15000
    lines = list(capture_job.read_lines(str(path), since))
    first = json.loads(lines[0])["request_id"]
    assert 5_000 <= len(lines) <= 5_000 + 600, len(lines)  # at most ~64 KB read before it
    assert int(first[4:]) <= 15_000
    assert len(list(capture_job.read_lines(str(path), None))) == 20_000
    assert len(list(capture_job.read_lines(str(path), T0 + timedelta(days=1)))) <= 600


def test_names_resolve_resources_by_endpoint_host(collector_ctx: JobContext, emulator) -> None:
    with collector_ctx.engine.connect() as conn:
        names = capture_job.Names.load(conn)
        resource = conn.execute(select(Resource.__table__)).first()
    row = capture_job.to_row(
        _record(1, resource=resource.name.upper(), deployment="CLAUDE-SONNET-4-5"), names
    )
    assert row["resource_id"] == resource.id and row["deployment_id"] is not None
    assert row["model_name"].startswith("claude-")
    assert capture_job.to_row(_record(1, apim_request_id=""), names) is None
    with pytest.raises(capture_job.Malformed):
        capture_job.to_row(_record(1, status="200"), names)
    creation_only = _record(1, usage={"input_tokens": 1, "cache_creation_input_tokens": 50})
    row = capture_job.to_row(creation_only, names)
    assert (row["cache_write_5m_tokens"], row["cache_write_1h_tokens"]) == (50, 0)


def _rollups_match_requests(ctx: JobContext) -> None:
    """The stored rollups equal a recompute from the requests table (capture rows included)."""
    before = dump(ctx)[1]
    with ctx.engine.begin() as conn:
        deps = [d for (d,) in conn.execute(select(Deployment.id))]
        times = conn.execute(select(Request.time).where(Request.source != "logs")).scalars().all()
        rollups.recompute_rollups(
            conn, deps, min(times) - timedelta(minutes=1), max(times) + timedelta(minutes=1)
        )
    assert dump(ctx)[1] == before


def test_spool_written_by_capture_is_what_ingest_reads(tmp_path: Path) -> None:
    """Round trip through the real writer: ``logged`` and ``time`` come out as ISO UTC."""
    path = tmp_path / "rt.jsonl"
    spool = capture.Spool(path)
    rec = _record(1)
    rec["time"] = T0.timestamp()
    del rec["logged"]
    spool.put(rec)
    assert spool.flush()
    (line,) = capture_job.read_lines(str(path), None)
    parsed = json.loads(line)
    assert parsed["time"] == T0.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert capture_job._parse_time(parsed["logged"]) >= T0
    spool.close()

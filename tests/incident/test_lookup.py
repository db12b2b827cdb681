"""``foundry-watch request ID``: id validation, the joined story by either id, the live Log
Analytics fallback, the spool fallback, hostile ids, the text and JSON forms and exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner

from collector import capture
from collector import lookup as lk
from collector.jobs import capture as capture_job
from collector.jobs.base import JobContext
from collector.request_cmd import request
from emulator import kql as emulator_kql
from emulator import logs as emulator_logs
from models.tables import Request
from tests.incident.conftest import MSG
from tests.incident.helpers import records
from tests.incident.test_ingest import logs_cycle, truth

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HOSTILE = [
    "req_abcdefgh' | take 1",
    "req_abcdefgh\n| project CorrelationId",
    "req_abc\rdefgh",
    'req_abcdefgh" or 1==1',
    "req_abcdefgh|",
    "req_abcdefgh\u200b",
    "req_ａｂｃｄｅｆｇｈ",
    "req_abcd\\",
    "0f8fad5b-d9cb-469f-a165-70867728950e' or CorrelationId != '",
    "0f8fad5b-d9cb-469f-a165-70867728950e\n| take 100",
    "０f8fad5b-d9cb-469f-a165-70867728950e",
    "0f8fad5b-d9cb-469f-a165-70867728950",
    "{0f8fad5b-d9cb-469f-a165-70867728950e}",
    "'; drop table requests; --",
    "@'x'",
    "",
    "req_",
    "req_short",
    "req_" + "a" * 61,
    "🙂",
]


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "text,kind,value",
    [
        ("req_011CVHt1QzJ8GHvK2x", "request-id", "req_011CVHt1QzJ8GHvK2x"),
        ("  req_011CVHt1QzJ8GHvK2x\n", "request-id", "req_011CVHt1QzJ8GHvK2x"),
        (
            "0F8FAD5B-D9CB-469F-A165-70867728950E",
            "apim-request-id",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
        ),
    ],
)
def test_valid_ids(text: str, kind: str, value: str) -> None:
    assert lk.parse_id(text) == lk.RequestKey(kind, value)


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_ids_are_refused_in_one_printable_line(text: str) -> None:
    with pytest.raises(lk.InvalidId) as err:
        lk.parse_id(text)
    message = str(err.value)
    assert "\n" not in message and "\r" not in message and message.isascii()


@pytest.mark.parametrize("value", [*HOSTILE, "it's", "a\\'b", "\u2028", "\x00", "中文"])
def test_live_template_matches_exactly_in_the_emulators_kql(value: str) -> None:
    """The id is a literal: run the template over rows holding every hostile value."""
    now = datetime.now(UTC)
    values = [*HOSTILE, "it's", "a\\'b", "\u2028", "\x00", "中文", "plain"]
    rows = [
        {
            **{c.name: None for c in emulator_logs.COLUMNS},
            "TimeGenerated": now,
            "Category": "RequestResponse",
            "ResourceProvider": "MICROSOFT.COGNITIVESERVICES",
            "CorrelationId": v,
        }
        for v in values
    ]
    query = lk.correlation_query(value, now - timedelta(minutes=1), now + timedelta(minutes=1))
    assert "\n| take 10" in query and query.count("\n") == 5  # no line smuggled in
    result = emulator_kql.execute(
        query, {"AzureDiagnostics": emulator_kql.Table(emulator_logs.COLUMNS, rows)}
    )
    index = [c.name for c in result.columns].index("CorrelationId")
    assert [r[index] for r in result.rows] == [value]


def test_hostile_ids_over_the_wire_find_nothing(collector_ctx: JobContext) -> None:
    """Against the emulator's Log Analytics endpoint: no 400, no rows, no error."""
    now = datetime.now(UTC)
    for value in HOSTILE:
        rows, errors = lk.search_live(
            collector_ctx.settings,
            collector_ctx.engine,
            collector_ctx.credential,
            value,
            start=now - timedelta(hours=1),
            end=now,
        )
        assert (rows, errors) == ([], []), value


# ------------------------------------------------------------------------ the joined story
def _call(client: Any) -> tuple[str, str]:
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=80, messages=MSG) as s:
        s.get_final_message()
        return s.response.headers["request-id"], s.response.headers["apim-request-id"]


def test_both_ids_show_the_joined_story(
    collector_ctx: JobContext, emulator, make_client, spool: Path, resource: str
) -> None:
    rid, apim = _call(make_client(spool))
    records(spool)
    capture_job.ingest(collector_ctx, str(spool))
    logs_cycle(collector_ctx)
    t = truth(emulator, apim)
    for text in (rid, apim, apim.upper()):
        report = lk.lookup(collector_ctx.settings, collector_ctx.engine, text)
        (found,) = report.found
        row = found.row
        assert found.origin == ["store"] and report.searched == ["store"]
        assert (row["request_id"], row["correlation_id"]) == (rid, apim)
        assert row["source"] == "both" and row["status_code"] == 200
        assert row["duration_ms"] == t.duration_ms and row["ttft_ms"] is not None
        assert row["input_tokens"] == t.input_tokens and row["output_tokens"] == t.output_tokens
        assert row["resource"] == resource and row["region"] == t.deployment.resource.location
        assert row["estimated_cost"] > 0 and row["currency"] == "USD"
        ctx = found.context
        assert ctx["around"]["requests"] >= 1 and ctx["usual"]["start"] < ctx["around"]["start"]
        assert ctx["minute"] <= row["time"]
        text_form = lk.render_text(report)
        for needle in (rid, apim, "Azure logs + client capture", "support bundle", "p95 (2xx)"):
            assert needle in text_form
        as_json = report.as_dict()
        json.dumps(as_json)
        (req,) = as_json["requests"]
        assert req["request_id"] == rid and req["apim_request_id"] == apim
        assert req["tokens"]["input"] == t.input_tokens and req["error_class"] is None
        assert f"apim-request-id: {apim}" in req["support_bundle"]


def test_failure_context_lists_the_other_failures_in_that_minute(
    collector_ctx: JobContext, make_client, spool: Path, faults
) -> None:
    import anthropic

    client = make_client(spool)
    faults.add(kind="throttle", endpoint="dataplane", retry_after_s=1, count=3)
    apims = []
    for _ in range(3):
        with pytest.raises(anthropic.RateLimitError) as err:
            client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=MSG)
        apims.append(err.value.response.headers["apim-request-id"])
    records(spool)
    capture_job.ingest(collector_ctx, str(spool))
    logs_cycle(collector_ctx)
    report = lk.lookup(collector_ctx.settings, collector_ctx.engine, apims[0])
    (found,) = report.found
    assert found.row["status_code"] == 429
    others = {o["apim_request_id"] for o in found.context["other_failures"]}
    same_minute = {a for a in apims[1:] if _minute(collector_ctx, a) == found.context["minute"]}
    assert same_minute <= others and apims[0] not in others
    assert found.context["around"]["throttle_rate"] > 0
    text_form = lk.render_text(report)
    assert "429 throttled" in text_form and "Retry-After" in text_form


def _minute(ctx: JobContext, apim: str) -> datetime:
    with ctx.engine.connect() as conn:
        t = conn.execute(select(Request.time).where(Request.correlation_id == apim)).scalar_one()
    return t.replace(second=0, microsecond=0)


def test_live_fallback_finds_what_the_store_lacks(
    collector_ctx: JobContext, make_client, spool: Path, resource: str
) -> None:
    rid, apim = _call(make_client(spool))
    report = lk.lookup(collector_ctx.settings, collector_ctx.engine, apim, window_days=1)
    (found,) = report.found
    assert found.origin == ["Log Analytics (live)"]
    assert found.row["correlation_id"] == apim and found.row["status_code"] == 200
    assert found.row["resource"] == resource and found.row["stream"] is True
    assert not found.row.get("request_id")  # Azure never sees Anthropic's id
    assert report.searched[0] == "store" and report.searched[1].startswith("Log Analytics")
    with collector_ctx.engine.connect() as conn:  # a reader: nothing was written
        assert conn.execute(select(func.count()).select_from(Request)).scalar_one() == 0
    # An Anthropic id alone cannot be searched in Azure; the spool maps it to the apim id.
    missing = lk.lookup(collector_ctx.settings, collector_ctx.engine, rid, window_days=1)
    assert not missing.found and any("apim-request-id" in n for n in missing.notes)
    settings = collector_ctx.settings.model_copy(update={"capture_spools": [str(spool)]})
    assert capture.flush(spool)  # the writer's line is on disk (it writes once a second)
    report = lk.lookup(settings, collector_ctx.engine, rid, window_days=1)
    (found,) = report.found
    assert found.origin == ["capture spool (not ingested yet)", "Log Analytics (live)"]
    assert (found.row["request_id"], found.row["correlation_id"]) == (rid, apim)
    assert found.row["source"] == "both" and found.row["ttft_ms"] is not None


def test_live_flag_rechecks_a_stored_request(
    collector_ctx: JobContext, make_client, spool: Path
) -> None:
    _, apim = _call(make_client(spool))
    records(spool)
    capture_job.ingest(collector_ctx, str(spool))
    report = lk.lookup(collector_ctx.settings, collector_ctx.engine, apim, live=True, window_days=1)
    (found,) = report.found
    assert found.origin == ["store", "Log Analytics (live)"]
    assert found.row["source"] == "both" and found.row["operation_name"]


# ------------------------------------------------------------------------------------ CLI
@pytest.fixture
def cli(collector_ctx: JobContext):
    app = typer.Typer()

    @app.callback()
    def configure(ctx: typer.Context) -> None:
        ctx.obj = collector_ctx.settings

    app.command("request")(request)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["request", *args])


def test_cli_text_json_and_exit_codes(
    cli, collector_ctx: JobContext, make_client, spool: Path
) -> None:
    rid, apim = _call(make_client(spool))
    records(spool)
    capture_job.ingest(collector_ctx, str(spool))
    logs_cycle(collector_ctx)
    shown = cli(rid)
    assert shown.exit_code == 0, shown.output
    assert apim in shown.output and "support bundle" in shown.output
    as_json = cli(apim, "--json")
    assert as_json.exit_code == 0
    doc = json.loads(as_json.output)
    assert doc["found"] and doc["requests"][0]["request_id"] == rid
    bad = cli("req_abc' | take 1")
    assert bad.exit_code == 2 and "not a request id" in bad.output
    unknown = cli("00000000-0000-4000-8000-000000000000", "--window-days", "1")
    assert unknown.exit_code == 1 and "not found" in unknown.output

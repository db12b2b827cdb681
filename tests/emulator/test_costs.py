"""The Cost Management query endpoint, driven by the real ``azure-mgmt-costmanagement`` client.

Billed truth comes from ``emulator.costs.billed_truth`` and, independently, from pricing the
world's request records at ``World.price``.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.mgmt.costmanagement import CostManagementClient

from emulator import costs as C

MARKETPLACE = "Marketplace"


def _client(credential, **kwargs) -> CostManagementClient:
    audience = os.environ["FOUNDRY_WATCH_ARM_AUDIENCE"].rstrip("/")
    return CostManagementClient(
        credential,
        base_url=os.environ["FOUNDRY_WATCH_ARM_ENDPOINT"],
        credential_scopes=[f"{audience}/.default"],
        **kwargs,
    )


def _body(first: date, last: date, groupings: list[str], **dataset: Any) -> dict[str, Any]:
    return {
        "type": "ActualCost",
        "timeframe": "Custom",
        "timePeriod": {"from": f"{first}T00:00:00Z", "to": f"{last}T23:59:59Z"},
        "dataset": {
            "granularity": "Daily",
            "aggregation": {"totalCost": {"name": "Cost", "function": "Sum"}},
            "grouping": [{"type": "Dimension", "name": g} for g in groupings],
            **dataset,
        },
    }


def _query(client, scope: str, body: dict[str, Any]) -> tuple[list[str], list[list[Any]], int]:
    """Columns, every row (following nextLink), and the number of pages."""
    result = client.query.usage(scope, body)
    columns = [c.name for c in result.properties.columns]
    rows = list(result.properties.rows)
    link = result.properties.next_link
    pages = 1
    while link:
        assert "$skiptoken=" in link and link.startswith("https://")
        resp = client.send_request(HttpRequest("POST", link, json=body))
        resp.raise_for_status()
        props = resp.json()["properties"]
        assert [c["name"] for c in props["columns"]] == columns
        rows.extend(props["rows"])
        link = props["nextLink"]
        pages += 1
    return columns, rows, pages


def _records(columns: list[str], rows: list[list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in rows]


@pytest.fixture
def cost_options(emulator):
    opts = C.options(emulator.state)
    saved = dataclasses.replace(opts)
    yield opts
    for f in dataclasses.fields(opts):
        setattr(opts, f.name, getattr(saved, f.name))


@pytest.fixture(scope="module")
def window(emulator) -> tuple[date, date]:
    """The last 8 full days: the oldest three are always final, the newest never are."""
    today = emulator.world.now().date()
    return today - timedelta(days=8), today - timedelta(days=1)


def test_daily_marketplace_rows_equal_billed_truth(emulator, credential, window):
    world = emulator.world
    sub = world.subscriptions[0]
    scope = f"/subscriptions/{sub}"
    groupings = ["ResourceGroupName", "ResourceId", "Meter", "PublisherType"]
    before = world.now()
    with _client(credential) as client:
        columns, rows, _ = _query(client, scope, _body(*window, groupings))
    after = world.now()
    assert columns[-1] == "Currency"
    assert set(columns) == {"Cost", "UsageDate", *groupings, "Currency"}
    recs = _records(columns, rows)
    assert all(isinstance(r["UsageDate"], int) and r["Currency"] == "USD" for r in recs)
    assert all(r["ResourceId"] == r["ResourceId"].lower() for r in recs)
    assert {r["PublisherType"] for r in recs} >= {MARKETPLACE, "Azure"}, "non-Claude rows too"

    by_day: dict[int, float] = defaultdict(float)
    for r in recs:
        if r["PublisherType"] == MARKETPLACE:
            assert (
                r["ResourceId"] == f"/subscriptions/{sub}/resourcegroups/{r['ResourceGroupName']}"
            )
            assert r["Meter"].startswith("Claude ")
            assert r["Meter"].endswith((" Input Tokens", " Output Tokens"))
            by_day[r["UsageDate"]] += r["Cost"]
    states = set()
    day = window[0]
    while day <= window[1]:
        truth = C.billed_truth(world, scope, day, before)
        if C.billed_truth(world, scope, day, after).state != truth.state:
            day += timedelta(days=1)
            continue  # a revision landed during the query
        states.add(truth.state)
        got = by_day.get(int(f"{day:%Y%m%d}"), 0.0)
        assert got == pytest.approx(truth.reported, rel=1e-9, abs=1e-9), (day, truth.state)
        if truth.state == "final":
            assert got == pytest.approx(truth.final, rel=1e-9)
            assert truth.final > 0
        if truth.state == "pending":
            assert got == 0.0
        day += timedelta(days=1)
    assert "final" in states
    assert states & {"pending", "preliminary"}, "recent days must lag or be preliminary"


def test_lag_and_revision_schedule(emulator):
    world = emulator.world
    today = world.now().date()
    for back in range(1, 31):
        day = today - timedelta(days=back)
        s = C.schedule(world, day)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        assert timedelta(days=1, hours=2) <= s.first_report_at - start < timedelta(days=3, hours=9)
        assert timedelta(days=2) <= s.final_at - s.first_report_at < timedelta(days=2, hours=12)
        assert s.state(s.first_report_at - timedelta(seconds=1)) == "pending"
        assert s.state(s.first_report_at) == "preliminary"
        assert s.state(s.final_at) == "final"
    sub = world.subscriptions[0]
    day = today - timedelta(days=7)
    s = C.schedule(world, day)
    prelim = C.billed_truth(world, f"/subscriptions/{sub}", day, s.first_report_at)
    final = C.billed_truth(world, f"/subscriptions/{sub}", day, s.final_at)
    assert prelim.state == "preliminary" and final.state == "final"
    assert 0.93 * final.final <= prelim.reported <= 0.97 * final.final
    assert final.reported == final.final
    yesterday = C.billed_truth(world, f"/subscriptions/{sub}", today - timedelta(1), world.now())
    assert yesterday.state != "final"


def test_billed_truth_equals_priced_world_requests(emulator, window):
    world = emulator.world
    day = window[0]
    res = world.resources[0]
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    in_rg = [
        r
        for r in world.resources
        if r.subscription_id == res.subscription_id and r.resource_group == res.resource_group
    ]
    expected = 0.0
    for rec in world.requests(start, start + timedelta(days=1), resources=in_rg):
        p = world.price(rec.deployment.model_name)
        expected += (
            rec.input_tokens * p["input"]
            + rec.output_tokens * p["output"]
            + rec.cache_read_tokens * p["cache_read"]
            + rec.cache_write_5m_tokens * p["cache_write_5m"]
            + rec.cache_write_1h_tokens * p["cache_write_1h"]
        ) / 1e6
    scope = f"/subscriptions/{res.subscription_id}/resourceGroups/{res.resource_group}"
    truth = C.billed_truth(world, scope, day, world.now())
    assert truth.state == "final"
    assert truth.final == pytest.approx(expected, rel=1e-9)
    assert truth.final > 0


def test_resource_group_scope_and_saas_variant(emulator, credential, window, cost_options):
    world = emulator.world
    res = world.resources[0]
    rg = res.resource_group
    scope = f"/subscriptions/{res.subscription_id}/resourceGroups/{rg}"
    body = _body(window[0], window[0], ["ResourceId", "Meter", "PublisherType", "ServiceName"])
    with _client(credential) as client:
        columns, rows, _ = _query(client, scope, body)
        cost_options.marketplace_resource_id = "saas"
        columns2, rows2, _ = _query(client, scope, body)
    market = [r for r in _records(columns, rows) if r["PublisherType"] == MARKETPLACE]
    assert market
    assert {r["ResourceId"] for r in market} == {
        f"/subscriptions/{res.subscription_id}/resourcegroups/{rg}".lower()
    }
    assert {r["ServiceName"] for r in market} == {"SaaS"}
    foundry = [r for r in _records(columns, rows) if r["PublisherType"] == "Azure"]
    assert res.arm_id.lower() in {r["ResourceId"] for r in foundry}
    saas = [r for r in _records(columns2, rows2) if r["PublisherType"] == MARKETPLACE]
    assert all(r["ResourceId"].endswith(f"/providers/{C.SAAS_RESOURCE}") for r in saas)
    assert sum(r["Cost"] for r in saas) == pytest.approx(sum(r["Cost"] for r in market))
    truth = C.billed_truth(world, scope, window[0], world.now())
    assert sum(r["Cost"] for r in market) == pytest.approx(truth.final)


def test_separate_cache_meters_keep_the_total(emulator, credential, window, cost_options):
    world = emulator.world
    sub = world.subscriptions[0]
    scope = f"/subscriptions/{sub}"
    body = _body(window[0], window[0], ["Meter", "PublisherType"])
    cost_options.cache_meters = "separate"
    with _client(credential) as client:
        columns, rows, _ = _query(client, scope, body)
    market = [r for r in _records(columns, rows) if r["PublisherType"] == MARKETPLACE]
    meters = {r["Meter"] for r in market}
    assert any("Cache Read" in m for m in meters)
    truth = C.billed_truth(world, scope, window[0], world.now(), cache_meters="separate")
    assert sum(r["Cost"] for r in market) == pytest.approx(truth.final)


def test_paging_follows_nextlink(emulator, credential, window, cost_options):
    sub = emulator.world.subscriptions[0]
    body = _body(window[0], window[0] + timedelta(days=2), ["ResourceId", "Meter"])
    with _client(credential) as client:
        cols_all, rows_all, pages_all = _query(client, f"/subscriptions/{sub}", body)
        cost_options.page_size = 7
        cols, rows, pages = _query(client, f"/subscriptions/{sub}", body)
    assert pages_all == 1
    assert pages == -(-len(rows_all) // 7) > 1
    assert cols == cols_all
    assert rows == rows_all


def test_column_order_is_not_fixed(emulator, credential, window, cost_options):
    sub = emulator.world.subscriptions[0]
    body = _body(window[0], window[0], ["ResourceGroupName"])
    orders = {}
    with _client(credential) as client:
        for order in C.COLUMN_ORDERS:
            cost_options.column_order = order
            columns, rows, _ = _query(client, f"/subscriptions/{sub}", body)
            assert columns[-1] == "Currency"
            orders[order] = columns
            recs = _records(columns, rows)
            assert all(isinstance(r["Cost"], float) for r in recs)
    assert len({tuple(c) for c in orders.values()}) == 3
    assert all(set(c) == set(orders["live"]) for c in orders.values())
    assert orders["live"][:2] == ["Cost", "UsageDate"]
    assert orders["spec"][:2] == ["Cost", "ResourceGroupName"]


def test_timeframes_and_granularity(emulator, credential):
    sub = emulator.world.subscriptions[0]
    body = {
        "type": "Usage",
        "timeframe": "TheLastMonth",
        "dataset": {
            "granularity": "None",
            "aggregation": {"totalCost": {"name": "PreTaxCost", "function": "Sum"}},
            "grouping": [{"type": "Dimension", "name": "MeterSubCategory"}],
            "filter": {
                "dimensions": {"name": "PublisherType", "operator": "In", "values": [MARKETPLACE]}
            },
        },
    }
    with _client(credential) as client:
        result = client.query.usage(f"/subscriptions/{sub}", body)
    names = [c.name for c in result.properties.columns]
    assert set(names) == {"PreTaxCost", "MeterSubcategory", "Currency"}
    recs = _records(names, result.properties.rows)
    assert all(r["MeterSubcategory"].startswith("Claude ") for r in recs)


def test_empty_period_answers_no_rows(emulator, credential):
    sub = emulator.world.subscriptions[0]
    future = emulator.world.now().date() + timedelta(days=10)
    with _client(credential) as client:
        result = client.query.usage(f"/subscriptions/{sub}", _body(future, future, ["Meter"]))
    assert result.properties.rows == []
    assert result.properties.next_link is None


def test_qpu_headers_on_every_answer(emulator, credential, window):
    sub = emulator.world.subscriptions[0]
    with _client(credential) as client:
        headers = client.query.usage(
            f"/subscriptions/{sub}",
            _body(window[0], window[0], ["Meter"]),
            cls=lambda resp, _deserialized, _h: resp.http_response.headers,
        )
    assert headers["x-ms-ratelimit-microsoft.costmanagement-qpu-consumed"] == "1"
    assert "QueriesPerHour:" in headers["x-ms-ratelimit-microsoft.costmanagement-qpu-remaining"]


def test_throttle_429_carries_retry_headers(emulator, credential, window, faults):
    sub = emulator.world.subscriptions[0]
    faults.add(kind="throttle", endpoint="costs", retry_after_s=7)
    with (
        _client(credential, retry_total=0) as client,
        pytest.raises(HttpResponseError) as info,
    ):
        client.query.usage(f"/subscriptions/{sub}", _body(window[0], window[0], ["Meter"]))
    err = info.value
    assert err.status_code == 429
    assert err.error.code == "429"
    assert err.error.message == "Too many requests. Please retry."
    h = err.response.headers
    for name in (
        "x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after",
        "x-ms-ratelimit-microsoft.costmanagement-entity-retry-after",
        "x-ms-ratelimit-microsoft.costmanagement-tenant-retry-after",
        "Retry-After",
    ):
        assert h[name] == "7"
    assert "x-ms-ratelimit-microsoft.costmanagement-qpu-remaining" in h


def test_throttle_with_retry_after_is_retried_by_the_sdk(emulator, credential, window, faults):
    sub = emulator.world.subscriptions[0]
    faults.add(kind="throttle", endpoint="costs", retry_after_s=0, count=2)
    with _client(credential) as client:
        result = client.query.usage(f"/subscriptions/{sub}", _body(window[0], window[0], ["Meter"]))
    assert result.properties.rows
    assert faults.rules() == []


def test_nextlink_break_fails_the_next_page_once(
    emulator, credential, window, faults, cost_options
):
    sub = emulator.world.subscriptions[0]
    body = _body(window[0], window[0], ["ResourceId", "Meter"])
    cost_options.page_size = 3
    faults.add(kind="nextlink_break", endpoint="costs")
    with _client(credential, retry_total=0) as client:
        first = client.query.usage(f"/subscriptions/{sub}", body)
        link = first.properties.next_link
        assert link
        broken = client.send_request(HttpRequest("POST", link, json=body))
        assert broken.status_code == 500
        assert broken.json()["error"]["code"] == "InternalServerError"
        again = client.send_request(HttpRequest("POST", link, json=body))
        assert again.status_code == 200
        assert again.json()["properties"]["rows"]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (
            lambda b: b["dataset"]["grouping"].append({"type": "Dimension", "name": "Resource"}),
            "Invalid dataset grouping: 'Resource'",
        ),
        (lambda b: b.pop("timePeriod"), "timePeriod"),
        (lambda b: b.update(type="Nope"), "Invalid type"),
        (lambda b: b["dataset"].update(granularity="Hourly"), "granularity"),
        (lambda b: b["timePeriod"].update({"from": "2020-01-01T00:00:00Z"}), "1 year"),
        (
            lambda b: b["dataset"]["aggregation"]["totalCost"].update(name="Money"),
            "Invalid aggregation column name",
        ),
    ],
)
def test_bad_body_is_400_in_arm_shape(emulator, credential, window, mutate, fragment):
    sub = emulator.world.subscriptions[0]
    body = _body(window[0], window[0], ["Meter"])
    mutate(body)
    with _client(credential) as client, pytest.raises(HttpResponseError) as info:
        client.query.usage(f"/subscriptions/{sub}", body)
    assert info.value.status_code == 400
    assert info.value.error.code == "BadRequest"
    assert fragment in info.value.error.message
    assert info.value.error.message.startswith("Invalid query definition")


def test_unknown_scope_is_404(emulator, credential, window):
    body = _body(window[0], window[0], ["Meter"])
    sub = emulator.world.subscriptions[0]
    with _client(credential) as client:
        with pytest.raises(ResourceNotFoundError) as no_sub:
            client.query.usage("/subscriptions/00000000-0000-0000-0000-000000000000", body)
        with pytest.raises(ResourceNotFoundError) as no_rg:
            client.query.usage(f"/subscriptions/{sub}/resourceGroups/rg-nope", body)
    assert no_sub.value.error.code == "SubscriptionNotFound"
    assert no_rg.value.error.code == "ResourceGroupNotFound"


def test_model_display_names():
    assert C.model_display("claude-sonnet-4-5") == "Claude Sonnet 4.5"
    assert C.model_display("claude-opus-4-1") == "Claude Opus 4.1"

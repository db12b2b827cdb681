"""Unit tests of the emulator's KQL subset: parser, evaluator, types and error positions."""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emulator import kql
from emulator.kql import Column, KqlError, Table

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

COLUMNS = [
    Column("TimeGenerated", "datetime"),
    Column("Category", "string"),
    Column("DurationMs", "long"),
    Column("ResultSignature", "string"),
    Column("CorrelationId", "string"),
    Column("properties_s", "string"),
    Column("Score", "real"),
]


def _row(i: int) -> dict[str, Any]:
    props = {
        "modelDeploymentName": f"dep-{i % 3}",
        "streamType": "Streaming" if i % 2 else "Non-Streaming",
        "requestLength": 100 + i,
        "nested": {"list": [i, i * 2]},
    }
    return {
        "TimeGenerated": NOW - timedelta(minutes=10 - i),
        "Category": "RequestResponse",
        "DurationMs": 100 * i,
        "ResultSignature": "429" if i % 4 == 3 else "200",
        "CorrelationId": f"corr-{i:02d}",
        "properties_s": json.dumps(props),
        "Score": i / 2,
    }


ROWS = [_row(i) for i in range(10)]


def run(query: str, rows: Any = None, columns: list[Column] | None = None) -> kql.Result:
    table = Table(columns or COLUMNS, ROWS if rows is None else rows)
    return kql.execute(query, {"AzureDiagnostics": table}, now=NOW)


def values(query: str, rows: Any = None) -> list[list[Any]]:
    return list(run(query, rows).rows)


def col(query: str, name: str = "CorrelationId") -> list[Any]:
    result = run(query)
    idx = [c.name for c in result.columns].index(name)
    return [r[idx] for r in result.rows]


def types(query: str) -> dict[str, str]:
    return {c.name: c.type for c in run(query).columns}


# ----------------------------------------------------------------------------- where


@pytest.mark.parametrize(
    ("predicate", "expected"),
    [
        ("DurationMs == 300", [3]),
        ("DurationMs != 300", [0, 1, 2, 4, 5, 6, 7, 8, 9]),
        ("DurationMs < 200", [0, 1]),
        ("DurationMs <= 200", [0, 1, 2]),
        ("DurationMs > 700", [8, 9]),
        ("DurationMs >= 700", [7, 8, 9]),
        ("DurationMs between (200 .. 400)", [2, 3, 4]),
        ("DurationMs !between (200 .. 800)", [0, 1, 9]),
        ("CorrelationId in ('corr-01', \"corr-05\")", [1, 5]),
        ("CorrelationId !in ('corr-01', 'corr-05')", [0, 2, 3, 4, 6, 7, 8, 9]),
        ("CorrelationId in~ ('CORR-02')", [2]),
        ("CorrelationId has 'CORR'", list(range(10))),
        ("CorrelationId has 'orr'", []),
        ("CorrelationId has_cs 'CORR'", []),
        ("CorrelationId contains 'RR-0'", list(range(10))),
        ("CorrelationId contains_cs 'RR-0'", []),
        ("CorrelationId !contains '-0'", []),
        ("CorrelationId startswith 'corr-0'", list(range(10))),
        ("CorrelationId endswith '7'", [7]),
        ("CorrelationId =~ 'CORR-04'", [4]),
        ("CorrelationId !~ 'CORR-04'", [0, 1, 2, 3, 5, 6, 7, 8, 9]),
        ("DurationMs > 100 and DurationMs < 400", [2, 3]),
        ("DurationMs < 100 or DurationMs > 800", [0, 9]),
        ("not(DurationMs > 100)", [0, 1]),
        ("(DurationMs < 200 or DurationMs > 700) and ResultSignature == '200'", [0, 1, 8, 9]),
        ("isnotempty(CorrelationId) and isempty('')", list(range(10))),
        ("isempty(CorrelationId)", []),
        ("Score > 3.5", [8, 9]),
        ("DurationMs * 2 + 1 == 201", [1]),
        ("DurationMs / 100 % 3 == 0", [0, 3, 6, 9]),
        ("-DurationMs < -800", [9]),
        ("true", list(range(10))),
        ("false", []),
    ],
)
def test_where_operators(predicate: str, expected: list[int]) -> None:
    got = col(f"AzureDiagnostics | where {predicate}")
    assert got == [f"corr-{i:02d}" for i in expected]


def test_filter_is_an_alias_and_where_chains() -> None:
    got = col("AzureDiagnostics | filter DurationMs > 100 | where DurationMs < 400")
    assert got == ["corr-02", "corr-03"]


def test_time_functions() -> None:
    assert col("AzureDiagnostics | where TimeGenerated > ago(3m)") == ["corr-08", "corr-09"]
    assert col("AzureDiagnostics | where TimeGenerated >= now() - 1m") == ["corr-09"]
    assert col("AzureDiagnostics | where TimeGenerated > now(  ) - 90s") == ["corr-09"]
    got = col(
        "AzureDiagnostics | where TimeGenerated between "
        "(datetime(2025-03-01T11:52:00Z) .. datetime(2025-03-01 11:54:00))"
    )
    assert got == ["corr-02", "corr-03", "corr-04"]
    got = col(
        "AzureDiagnostics | where TimeGenerated between (datetime(2025-03-01T11:58:00Z) .. 1m)"
    )
    assert got == ["corr-08", "corr-09"]
    got = col("AzureDiagnostics | where TimeGenerated < todatetime('2025-03-01T11:51:30.5Z')")
    assert got == ["corr-00", "corr-01"]
    assert col("AzureDiagnostics | where TimeGenerated > ago(1d) | count", "Count") == [10]
    assert col("AzureDiagnostics | where TimeGenerated > ago(timespan(2h)) | count", "Count") == [
        10
    ]


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("1d", timedelta(days=1)),
        ("2h", timedelta(hours=2)),
        ("5m", timedelta(minutes=5)),
        ("30s", timedelta(seconds=30)),
        ("100ms", timedelta(milliseconds=100)),
        ("1.5h", timedelta(minutes=90)),
        ("10min", timedelta(minutes=10)),
        ("3days", timedelta(days=3)),
        ("7microseconds", timedelta(microseconds=7)),
    ],
)
def test_timespan_literals(literal: str, expected: timedelta) -> None:
    (row,) = list(run(f"AzureDiagnostics | take 1 | project d = ago({literal})").rows)
    assert row == [NOW - expected]


def test_conversions_and_types() -> None:
    q = (
        "AzureDiagnostics | take 1 | project s = tostring(DurationMs), i = toint('42'),"
        " l = tolong(ResultSignature), r = toreal('1.5'), d = todatetime('2025-01-01'),"
        " bad = toint('x'), b = tobool('true'), n = strlen(CorrelationId),"
        " u = toupper('a'), ts = tostring(datetime(2025-01-02T03:04:05Z))"
    )
    result = run(q)
    assert {c.name: c.type for c in result.columns} == {
        "s": "string",
        "i": "int",
        "l": "long",
        "r": "real",
        "d": "datetime",
        "bad": "int",
        "b": "bool",
        "n": "long",
        "u": "string",
        "ts": "string",
    }
    (row,) = list(result.rows)
    assert row == [
        "0",
        42,
        200,
        1.5,
        datetime(2025, 1, 1, tzinfo=UTC),
        None,
        True,
        7,
        "A",
        "2025-01-02T03:04:05Z",
    ]


def test_parse_json_member_and_index_access() -> None:
    q = (
        "AzureDiagnostics | where CorrelationId == 'corr-04' | project"
        " dep = tostring(parse_json(properties_s).modelDeploymentName),"
        " st = tostring(parse_json(properties_s)['streamType']),"
        " len = toint(parse_json(properties_s).requestLength),"
        " deep = tolong(parse_json(properties_s).nested.list[1]),"
        " missing = parse_json(properties_s).nope.deeper,"
        " raw = parse_json(properties_s).nested"
    )
    result = run(q)
    assert [c.type for c in result.columns] == [
        "string",
        "string",
        "int",
        "long",
        "dynamic",
        "dynamic",
    ]
    (row,) = list(result.rows)
    assert row == ["dep-1", "Non-Streaming", 104, 8, None, {"list": [4, 8]}]
    # dynamic compares directly against scalars
    got = col("AzureDiagnostics | where parse_json(properties_s).modelDeploymentName == 'dep-2'")
    assert got == ["corr-02", "corr-05", "corr-08"]
    got = col("AzureDiagnostics | where parse_json(properties_s).requestLength > 107")
    assert got == ["corr-08", "corr-09"]


# ----------------------------------------------------------------------------- tabular operators


def test_extend_project_and_project_away() -> None:
    q = (
        "AzureDiagnostics | where CorrelationId == 'corr-02'"
        " | extend Seconds = DurationMs / 1000.0, Double = Seconds * 2"
        " | project CorrelationId, Seconds, Double, Status = toint(ResultSignature)"
    )
    result = run(q)
    assert [(c.name, c.type) for c in result.columns] == [
        ("CorrelationId", "string"),
        ("Seconds", "real"),
        ("Double", "real"),
        ("Status", "int"),
    ]
    assert list(result.rows) == [["corr-02", 0.2, 0.4, 200]]

    result = run("AzureDiagnostics | take 1 | project-away properties_s, Score, Category")
    assert [c.name for c in result.columns] == [
        "TimeGenerated",
        "DurationMs",
        "ResultSignature",
        "CorrelationId",
    ]
    # extend replacing a column keeps its position and takes the new type
    result = run("AzureDiagnostics | take 1 | extend DurationMs = tostring(DurationMs)")
    assert result.columns[2] == Column("DurationMs", "string")


def test_summarize_aggregates_and_default_names() -> None:
    q = (
        "AzureDiagnostics | summarize count(), sum(DurationMs), avg(DurationMs),"
        " min(DurationMs), max(TimeGenerated), percentile(DurationMs, 95),"
        " dcount(ResultSignature), countif(ResultSignature == '429'), sum(Score)"
    )
    result = run(q)
    assert [(c.name, c.type) for c in result.columns] == [
        ("count_", "long"),
        ("sum_DurationMs", "long"),
        ("avg_DurationMs", "real"),
        ("min_DurationMs", "long"),
        ("max_TimeGenerated", "datetime"),
        ("percentile_DurationMs_95", "long"),
        ("dcount_ResultSignature", "long"),
        ("countif_", "long"),
        ("sum_Score", "real"),
    ]
    assert list(result.rows) == [[10, 4500, 450.0, 0, NOW - timedelta(minutes=1), 900, 2, 2, 22.5]]


def test_percentile_nearest_rank() -> None:
    q = "AzureDiagnostics | summarize p50 = percentile(DurationMs, 50), p90 = percentile(DurationMs, 90), p0 = percentile(DurationMs, 0), p100 = percentile(DurationMs, 100)"  # noqa: E501
    assert values(q) == [[400, 800, 0, 900]]
    q = "AzureDiagnostics | summarize percentiles(DurationMs, 50, 99.5)"
    result = run(q)
    assert [c.name for c in result.columns] == [
        "percentile_DurationMs_50",
        "percentile_DurationMs_99_5",
    ]
    assert list(result.rows) == [[400, 900]]


def test_summarize_by_columns_and_bin() -> None:
    q = (
        "AzureDiagnostics | summarize n = count(), p = max(DurationMs)"
        " by ResultSignature, bin(TimeGenerated, 5m)"
        " | order by TimeGenerated asc, ResultSignature asc"
    )
    result = run(q)
    assert [(c.name, c.type) for c in result.columns] == [
        ("ResultSignature", "string"),
        ("TimeGenerated", "datetime"),
        ("n", "long"),
        ("p", "long"),
    ]
    t0 = datetime(2025, 3, 1, 11, 50, tzinfo=UTC)
    t1 = datetime(2025, 3, 1, 11, 55, tzinfo=UTC)
    assert list(result.rows) == [
        ["200", t0, 4, 400],
        ["429", t0, 1, 300],
        ["200", t1, 4, 900],
        ["429", t1, 1, 700],
    ]


def test_summarize_by_expression_and_empty_input() -> None:
    q = (
        "AzureDiagnostics | summarize count() by dep = tostring(parse_json(properties_s).modelDeploymentName)"  # noqa: E501
        " | sort by dep asc"
    )
    assert values(q) == [["dep-0", 4], ["dep-1", 3], ["dep-2", 3]]
    # no group keys over empty input: one row of defaults (count/sum 0, others null)
    q = "AzureDiagnostics | where false | summarize count(), sum(DurationMs), avg(DurationMs)"
    assert values(q) == [[0, 0, None]]
    # with group keys over empty input: no rows
    assert values("AzureDiagnostics | where false | summarize count() by ResultSignature") == []
    assert values("AzureDiagnostics | summarize by ResultSignature | order by ResultSignature") == [
        ["429"],
        ["200"],
    ]


def test_order_sort_take_limit_count() -> None:
    assert col("AzureDiagnostics | order by DurationMs desc | take 3") == [
        "corr-09",
        "corr-08",
        "corr-07",
    ]
    assert col("AzureDiagnostics | sort by DurationMs | limit 2") == ["corr-09", "corr-08"]
    assert col("AzureDiagnostics | sort by ResultSignature desc, DurationMs asc | take 3") == [
        "corr-03",
        "corr-07",
        "corr-00",
    ]
    assert values("AzureDiagnostics | count") == [[10]]
    assert types("AzureDiagnostics | count") == {"Count": "long"}
    assert values("AzureDiagnostics | take 0") == []


def test_order_nulls_placement() -> None:
    rows = [{"CorrelationId": c, "DurationMs": d} for c, d in (("a", 2), ("b", None), ("c", 1))]
    cols = [Column("CorrelationId", "string"), Column("DurationMs", "long")]

    def order(clause: str) -> list[str]:
        result = run(f"AzureDiagnostics | order by DurationMs {clause}", rows, cols)
        return [r[0] for r in result.rows]

    assert order("asc") == ["b", "c", "a"]
    assert order("desc") == ["a", "c", "b"]
    assert order("asc nulls last") == ["c", "a", "b"]
    assert order("desc nulls first") == ["b", "a", "c"]


def test_where_and_take_stream_lazily() -> None:
    def endless() -> Any:
        for i in itertools.count():
            yield {**ROWS[i % 10], "DurationMs": i}

    result = run("AzureDiagnostics | where DurationMs % 2 == 1 | take 3", endless())
    assert [r[2] for r in result.rows] == [1, 3, 5]
    # compilation errors surface before any row is read
    with pytest.raises(KqlError):
        run("AzureDiagnostics | where Nope == 1 | take 1", endless())


def test_comments_whitespace_and_trailing_semicolon() -> None:
    q = "AzureDiagnostics // the table\n| where DurationMs > 800 // filter\n\t| count;"
    assert values(q) == [[1]]


# ----------------------------------------------------------------------------- string literals


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("'plain'", "plain"),
        ('"double"', "double"),
        (r"'it\'s'", "it's"),
        (r'"say \"hi\""', 'say "hi"'),
        ("'\"ok\"'", '"ok"'),
        (r"'back\\slash'", "back\\slash"),
        (r"'tab\tnew\nline\r'", "tab\tnew\nline\r"),
        (r"'\u00e9t\u00E9'", "été"),
        ("@'C:\\path\\'", "C:\\path\\"),
        ("@'it''s'", "it's"),
        ('@"say ""hi"""', 'say "hi"'),
        ("'a' 'b' \"c\"", "abc"),
        ("'pipe | where x == 1 // not a comment'", "pipe | where x == 1 // not a comment"),
        ("'ユニコード 🚀'", "ユニコード 🚀"),
    ],
)
def test_string_literals(literal: str, value: str) -> None:
    (row,) = list(run(f"AzureDiagnostics | take 1 | project v = {literal}").rows)
    assert row == [value]


HOSTILE = [
    "",
    "'",
    '"',
    "\\",
    "\\'",
    "' or 1 == 1 or '",
    "x' | take 1000 | where 'a' == 'a",
    "line1\nline2",
    "carriage\r\nreturn",
    "tab\there",
    "// not a comment",
    "@'verbatim'",
    "ends with backslash \\",
    "unicode é ü 中文 🚀 \u200b",
    "control \x00 \x01 \x7f",
    "}{][)(|;,.",
    "a" * 5000,
]


def _rand_string(rng: random.Random) -> str:
    alphabet = "ab'\"\\|/\n\r\t @;(),.=~!%é中🚀\x00 "
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


@pytest.mark.parametrize(
    "value", HOSTILE + [_rand_string(random.Random(seed)) for seed in range(40)]
)
def test_quote_round_trips_any_string_as_a_where_literal(value: str) -> None:
    rows = [{**ROWS[0], "CorrelationId": "decoy"}, {**ROWS[1], "CorrelationId": value}]
    result = run(f"AzureDiagnostics | where CorrelationId == {kql.quote(value)}", rows)
    got = [r[4] for r in result.rows]
    assert got == [value]
    # and as a projected literal
    (row,) = list(run(f"AzureDiagnostics | take 1 | project v = {kql.quote(value)}").rows)
    assert row == [value]


def test_raw_newline_inside_a_regular_literal_is_a_syntax_error() -> None:
    with pytest.raises(KqlError) as err:
        run("AzureDiagnostics | where CorrelationId == 'a\nb'")
    assert err.value.kind == "SyntaxError"


# ----------------------------------------------------------------------------- errors


def test_syntax_error_position_matches_kusto() -> None:
    # Azure answers this query with "Query could not be parsed at 'invalid' on line [1,11]"
    # (azure-sdk-for-js monitor-query recording): line 1-based, pos 0-based.
    with pytest.raises(KqlError) as err:
        kql.parse("completely invalid syntax")
    e = err.value
    assert (e.kind, e.code, e.line, e.pos, e.token) == ("SyntaxError", "SYN0002", 1, 11, "invalid")
    assert e.message == "Query could not be parsed at 'invalid' on line [1,11]"


@pytest.mark.parametrize(
    ("query", "line", "pos", "token"),
    [
        ("AzureDiagnostics | where", 1, 24, "<EOF>"),
        ("AzureDiagnostics\n| frobnicate x", 2, 2, "frobnicate"),
        ("AzureDiagnostics | where CorrelationId == 'unterminated", 1, 42, "'"),
        ("AzureDiagnostics | where DurationMs > 1 |", 1, 41, "<EOF>"),
        ("AzureDiagnostics | take x", 1, 24, "x"),
        ("AzureDiagnostics | where a == == b", 1, 30, "=="),
        ("AzureDiagnostics | join (T) on x", 1, 19, "join"),
        ("let x = 1; AzureDiagnostics", 1, 4, "x"),
        ("AzureDiagnostics | union T", 1, 19, "union"),
        ("AzureDiagnostics | mv-expand x", 1, 19, "mv"),
        ("AzureDiagnostics | where x == 'bad \\q escape'", 1, 35, "\\q"),
        (
            "AzureDiagnostics | where TimeGenerated > datetime(yesterday)",
            1,
            41,
            "datetime(yesterday)",
        ),
    ],
)
def test_syntax_errors(query: str, line: int, pos: int, token: str) -> None:
    with pytest.raises(KqlError) as err:
        kql.parse(query)
    e = err.value
    assert e.kind == "SyntaxError"
    assert (e.line, e.pos, e.token) == (line, pos, token), e.message
    assert f"on line [{line},{pos}]" in e.message


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("AzureDiagnostics | where Nope == 1", "Failed to resolve scalar expression named 'Nope'"),
        (
            "AzureDiagnostics | where ResultSignature == 200",
            "Cannot compare values of types string and long",
        ),
        ("AzureDiagnostics | where DurationMs", "must be boolean"),
        ("AzureDiagnostics | extend c = count()", "allowed only in summarize"),
        ("AzureDiagnostics | summarize tostring(DurationMs)", "expected an aggregation function"),
        ("AzureDiagnostics | where frob(DurationMs)", "Unknown function: 'frob'"),
        ("AzureDiagnostics | where ago(1) > now()", "must be timespan"),
        ("AzureDiagnostics | project x = 1, x = 2", "specified more than once"),
        ("AzureDiagnostics | project-away Nope", "Failed to resolve column named 'Nope'"),
        ("AzureDiagnostics | project CorrelationId.x", "requires a dynamic value"),
        ("Other | take 1", "Failed to resolve table or column expression named 'Other'"),
        ("AzureDiagnostics | summarize percentile(DurationMs, Score)", "numeric literal"),
        (
            "AzureDiagnostics | where DurationMs + 'a' > 1",
            "cannot be applied to types long and string",
        ),
        (
            "AzureDiagnostics | project DurationMs | where CorrelationId == ''",
            "named 'CorrelationId'",
        ),
    ],
)
def test_semantic_errors(query: str, fragment: str) -> None:
    with pytest.raises(KqlError) as err:
        run(query)
    assert err.value.kind == "SemanticError"
    assert err.value.code == "SEM0100"
    assert fragment in err.value.message


def test_semantic_error_carries_position() -> None:
    with pytest.raises(KqlError) as err:
        run("AzureDiagnostics\n| where   Nope == 1")
    assert (err.value.line, err.value.pos, err.value.token) == (2, 10, "Nope")


def test_empty_query_is_a_syntax_error() -> None:
    with pytest.raises(KqlError) as err:
        kql.parse("   ")
    assert err.value.kind == "SyntaxError"


# ----------------------------------------------------------------------------- wire format


def test_to_wire() -> None:
    assert kql.to_wire(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), "datetime") == (
        "2025-01-02T03:04:05Z"
    )
    assert kql.to_wire(datetime(2025, 1, 2, 3, 4, 5, 123000, tzinfo=UTC), "datetime") == (
        "2025-01-02T03:04:05.1230000Z"
    )
    assert kql.to_wire({"a": [1, "é"]}, "dynamic") == '{"a":[1,"é"]}'
    assert kql.to_wire(None, "long") is None
    assert kql.to_wire(float("nan"), "real") is None
    assert kql.to_wire(timedelta(days=1, hours=2, seconds=3.5), "timespan") == "1.02:00:03.5000000"
    assert kql.to_wire(True, "bool") is True

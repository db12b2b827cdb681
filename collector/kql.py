"""The collector's KQL: fixed query templates and the one way a value becomes a literal.

Why fixed templates: a query is code sent to someone else's engine. Every query foundry-watch
runs is built here from constant text; values enter only through :func:`escape_string_literal`
and :func:`datetime_literal`, never by pasting user input into query text.

Escaping (``escape_string_literal``), read in Kusto.Language's lexer
(microsoft/Kusto-Query-Language ``src/Kusto.Language/Parser/LexicalGrammar.cs``) and the string
data type docs: a single-quoted literal holds any character except ``\\``, ``'``, CR and LF;
backslash escapes are ``\\' \\" \\\\ \\a \\b \\f \\n \\r \\t \\v \\uXXXX \\UXXXXXXXX \\xHH`` and
octal. Verbatim ``@'...'`` literals cannot hold a line break at all, so they are not safe for any
input; the escaped single-quoted form is. We escape ``\\`` and ``'``, write TAB/LF/CR as
``\\t \\n \\r``, and every other control or line-separator character (C0, DEL, C1, U+2028/2029,
lone surrogates) as ``\\uXXXX``, so the query text is one printable line whatever the input.
All other characters (any Unicode, quotes of the other kind, ``|``, ``;``, ``//``) stay as they are:
inside a literal they are plain text.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = [
    "REQUEST_LOG_COLUMNS",
    "datetime_literal",
    "escape_string_literal",
    "request_counts_query",
    "request_logs_query",
]

#: Columns the request-log query returns (the collector maps them by name, not by position).
REQUEST_LOG_COLUMNS = (
    "TimeGenerated",
    "_ResourceId",
    "OperationName",
    "DurationMs",
    "ResultSignature",
    "CorrelationId",
    "CallerIPAddress",
    "properties_s",
)

_SHORT_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _needs_unicode_escape(ch: str) -> bool:
    code = ord(ch)
    return (
        code < 0x20
        or 0x7F <= code <= 0x9F
        or code in (0x2028, 0x2029)
        or 0xD800 <= code <= 0xDFFF  # a lone surrogate cannot even be sent as UTF-8
    )


def escape_string_literal(value: str) -> str:
    """``value`` as a single-quoted KQL string literal that evaluates to exactly ``value``."""
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    out = ["'"]
    for ch in value:
        short = _SHORT_ESCAPES.get(ch)
        if short is not None:
            out.append(short)
        elif _needs_unicode_escape(ch):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append("'")
    return "".join(out)


def datetime_literal(value: datetime) -> str:
    """``datetime(2026-01-02T03:04:05.1234560Z)``: an aware datetime as a KQL literal (UTC).

    Seven fraction digits are Kusto's tick precision; Python has microseconds, so the last is 0.
    """
    if value.tzinfo is None:
        raise ValueError("naive datetime given; pass an aware UTC time")
    value = value.astimezone(UTC)
    return f"datetime({value.strftime('%Y-%m-%dT%H:%M:%S')}.{value.microsecond:06d}0Z)"


def _timespan_literal(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds <= 0 or seconds != int(seconds):
        raise ValueError("bin size must be a positive whole number of seconds")
    seconds = int(seconds)
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def _request_logs_source(start: datetime, end: datetime) -> str:
    """The ``AzureDiagnostics`` rows both templates read: TimeGenerated in [start, end)."""
    return (
        "AzureDiagnostics\n"
        f"| where TimeGenerated >= {datetime_literal(start)}"
        f" and TimeGenerated < {datetime_literal(end)}\n"
        '| where Category == "RequestResponse"'
        ' and ResourceProvider == "MICROSOFT.COGNITIVESERVICES"\n'
    )


def request_logs_query(start: datetime, end: datetime) -> str:
    """Every RequestResponse row of Cognitive Services accounts with TimeGenerated in
    [start, end), oldest first (ordered, so a truncated answer is at least a prefix)."""
    return (
        _request_logs_source(start, end)
        + "| project "
        + ", ".join(REQUEST_LOG_COLUMNS)
        + "\n| order by TimeGenerated asc"
    )


def request_counts_query(start: datetime, end: datetime, bin_size: timedelta) -> str:
    """Rows per ``bin_size`` of TimeGenerated over [start, end): used to cut a large window
    into slices that each stay far below Log Analytics' row limit. Columns: TimeGenerated, n."""
    return (
        _request_logs_source(start, end)
        + f"| summarize n = count() by bin(TimeGenerated, {_timespan_literal(bin_size)})"
    )

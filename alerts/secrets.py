"""Keeping channel secrets out of logs, errors and listings.

Webhook URLs carry their token in the path or query (Slack ``/services/T…/B…/XXXX``, Teams
workflow ``sig=…``), SMTP has a password. They live in ``SecretStr`` fields and leave them only
to be sent. Everything else that could carry them — exception texts (httpx puts the URL in its
messages), httpx's own ``HTTP Request: POST https://…`` INFO log line, the ``alerts list`` table —
goes through :func:`scrub` / :func:`mask_url`. A logging filter on the httpx/httpcore loggers
applies the same scrub to records those libraries emit while a channel sends.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import parse_qsl, urlsplit

MASK = "****"
_URL = re.compile(r"(?P<base>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#'\"<>]+)(?P<rest>[^\s'\"<>]*)")
_known: set[str] = set()
_lock = threading.Lock()

#: Loggers of the HTTP stack; their records may carry a full request URL.
HTTP_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def mask_url(url: str) -> str:
    """``https://hooks.slack.com/services/T0/B0/xyz`` → ``https://hooks.slack.com/****``.

    Scheme and host stay (enough to tell channels apart); path, query and user info go.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if not parts.scheme or not parts.hostname:
        return MASK
    port = f":{parts.port}" if parts.port else ""
    tail = f"/{MASK}" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{parts.hostname}{port}{tail}"


def register_secret(*values: str | None) -> None:
    """Remember secret strings so :func:`scrub` removes them wherever they turn up."""
    with _lock:
        for value in values:
            if value and len(value) >= 4:
                _known.add(value)
                if "://" in value:
                    _known.update(_token_parts(value))
                else:  # "Bearer abc…": the credential alone, too
                    _known.update(p for p in value.split() if len(p) >= 8)


def _looks_like_token(piece: str) -> bool:
    return len(piece) >= 8 and any(c.isdigit() for c in piece)


def _token_parts(url: str) -> set[str]:
    """Pieces of a webhook URL that carry its token, so they are caught on their own too:
    the path and query as a whole, and every token-like segment or query value (8+
    characters with a digit; words such as ``services`` or ``workflows`` stay readable)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return set()
    out = {p for p in (parts.path, parts.query, parts.password) if p and len(p) >= 6}
    out.discard("/")
    out.update(seg for seg in parts.path.split("/") if _looks_like_token(seg))
    out.update(v for _k, v in parse_qsl(parts.query) if _looks_like_token(v))
    return out


def scrub(text: str) -> str:
    """``text`` without any registered secret and with every URL's path/query masked."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return _URL.sub(lambda m: mask_url(m.group(0)), text)


class ScrubFilter(logging.Filter):
    """Rewrites a record's message through :func:`scrub` (never drops the record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error path
            return True
        cleaned = scrub(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


_FILTER = ScrubFilter()


def install_log_filter(*extra: str) -> None:
    """Attach the scrub filter to the HTTP stack's loggers (and ``extra`` ones); idempotent."""
    for name in (*HTTP_LOGGERS, *extra):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

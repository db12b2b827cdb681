"""Small helpers shared by the incident tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collector import capture


def records(spool: Path) -> list[dict[str, Any]]:
    """Every record in ``spool`` (after the writer thread has flushed)."""
    assert capture.flush(spool, timeout=10)
    if not spool.exists():
        return []
    return [json.loads(line) for line in spool.read_text().splitlines()]


def by_apim(spool: Path, apim: str) -> dict[str, Any]:
    (rec,) = [r for r in records(spool) if r["apim_request_id"] == apim]
    return rec


def usage_of(u: Any) -> dict[str, int]:
    """An SDK ``Usage`` as the capture record writes it."""
    out = {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
    }
    if u.cache_creation is not None:
        out["ephemeral_5m_input_tokens"] = u.cache_creation.ephemeral_5m_input_tokens
        out["ephemeral_1h_input_tokens"] = u.cache_creation.ephemeral_1h_input_tokens
    return out

"""Request lookup: what happened to request ``req_…`` / apim id ``…``?

The store first, through the cached read-only queries like every page. Then, when the store
does not have the id or the user ticks *Search Log Analytics live*, Log Analytics directly:
the dashboard's one documented exception to "reads only the store", always triggered by a
user's lookup. It runs ``collector.lookup.lookup`` — the code path of ``foundry-watch request
ID --live``: same id validation, same bounded window (the retention window), the id entering
the KQL only as an escaped literal — with the dashboard's settings and
``DefaultAzureCredential``. The answer is kept in the session, so a rerun of the page (a filter,
the time zone) does not query Azure again; *Search again* does. Failures (no credential, 403,
timeout) are one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC
from typing import Any

import pandas as pd
import streamlit as st

from collector import lookup as lk
from dashboard import queries as q
from dashboard import ui

_LIVE = "_fw_live_lookups"
_KEEP = 20  # live answers remembered per session
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$])")

view = ui.current()


def plain(text: str) -> str:
    """``text`` shown literally by Markdown (ids and error lines are not Markdown)."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def _value(v: Any) -> Any:
    """A frame cell or a live row value as a plain Python value (NaN/NaT → None)."""
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):  # lists, dicts: not missing
        return v
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    return v.item() if hasattr(v, "item") else v


def _or_dash(v: Any) -> Any:
    return "–" if v is None else v


def _credential_factory(made: list[Any]):
    from collector.azure import make_credential

    def make() -> Any:
        made.append(make_credential(ui.settings()))
        return made[-1]

    return make


def search_live(key: lk.RequestKey, live: bool, days: int) -> dict[str, Any]:
    """``collector.lookup.lookup`` (store, spools, Log Analytics), at most once per id and
    mode per session unless *Search again*; returns ``{"report"}`` or ``{"error"}``."""
    cache: dict[tuple, dict[str, Any]] = st.session_state.setdefault(_LIVE, {})
    ck = (view.url, key.value, live, days)
    if ck in cache:
        return cache[ck]
    made: list[Any] = []
    try:
        with st.spinner("Searching Log Analytics live…"):
            report = lk.lookup(
                ui.settings(),
                ui.engine(view.url),
                key.value,
                live=live,
                window_days=days,
                credential=_credential_factory(made),
            )
        answer: dict[str, Any] = {"report": report}
    except Exception as exc:  # one line, whatever failed (settings, credential, network)
        from collector.errors import describe_azure_error

        answer = {"error": describe_azure_error(exc, source="live search", scope="Log Analytics")}
    finally:
        for cred in made:
            close = getattr(cred, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):  # closing must never fail the page
                    close()
    while len(cache) >= _KEEP:
        cache.pop(next(iter(cache)))
    cache[ck] = answer
    return answer


def show(row: dict[str, Any], origin: list[str]) -> None:
    """One request: headline, hint, fields, support bundle, its deployment's context."""
    status = row.get("status_code")
    cls = q.error_class_of(status) if status is not None else None
    when = pd.Timestamp(row["time"]).tz_convert(view.tz) if row.get("time") else None
    headline = (
        f"{status if status is not None else 'no response'} · "
        f"{row.get('deployment_name') or '?'} · "
        + (f"{when:%Y-%m-%d %H:%M:%S %Z}" if when is not None else "time unknown")
    )
    if status is None or cls:
        st.error(headline)
        hint = q.HINTS.get(cls) if cls else lk.error_class(None)[1]
        st.markdown(f"**{cls or 'no response'}**: {hint}")
    else:
        st.success(headline)
    if "Log Analytics (live)" in origin and "store" not in origin:
        st.caption(
            "Found in Log Analytics (live), not in the store yet: the collector's logs job "
            "stores it on its next cycles."
        )
    else:
        st.caption("Found in " + ", ".join(origin))
    t = row.get("time")
    cost = row.get("estimated_cost")
    details = {
        "request-id": row.get("request_id") or "(unknown: Azure logs carry only the apim id)",
        "apim-request-id": row.get("correlation_id"),
        "time (UTC)": f"{pd.Timestamp(t).tz_convert(UTC):%Y-%m-%d %H:%M:%S.%f}"[:-3] if t else "–",
        "resource": row.get("resource") or "",
        "region": row.get("region") or "",
        "deployment": row.get("deployment_name"),
        "model": row.get("model_name"),
        "operation": row.get("operation_name"),
        "status": status,
        "duration": ui.ms(row.get("duration_ms")),
        "time to first token": ui.ms(row.get("ttft_ms")),
        "stream": "–" if row.get("stream") is None else ("yes" if row["stream"] else "no"),
        "tokens in / out": f"{_or_dash(row.get('input_tokens'))} / "
        f"{_or_dash(row.get('output_tokens'))}",
        "caller": row.get("caller_ip"),
        "source": row.get("source"),
    }
    if cost is not None:
        details["estimated cost"] = f"{float(cost):.6f} {row.get('currency') or ''}".strip()
    st.table(pd.DataFrame({"field": list(details), "value": [str(v) for v in details.values()]}))
    st.markdown("**Support bundle** (paste into a support case)")
    st.code(lk.support_bundle(lk.Found(row, origin)), language=None)
    dep_id = row.get("deployment_id")
    if dep_id is None or t is None:
        return
    ctx = ui.query(view.url, "request_context", int(dep_id), pd.Timestamp(t).to_pydatetime())
    around, usual = ctx["around"], ctx["usual"]
    st.markdown("**Its deployment ±15 minutes around it vs the 24 h before**")
    frame = pd.DataFrame(
        {
            "": ["±15 min", "previous 24 h"],
            "requests/min": [
                (around.get("requests") or 0) / around["minutes"],
                (usual.get("requests") or 0) / usual["minutes"],
            ],
            "error %": [around.get("error_pct"), usual.get("error_pct")],
            "429 %": [around.get("throttled_pct"), usual.get("throttled_pct")],
            "p95 ms": [around.get("p95"), usual.get("p95")],
        }
    )
    st.dataframe(
        frame,
        hide_index=True,
        column_config={
            "requests/min": st.column_config.NumberColumn(format="%.2f"),
            "error %": st.column_config.NumberColumn(format="%.2f"),
            "429 %": st.column_config.NumberColumn(format="%.2f"),
            "p95 ms": st.column_config.NumberColumn(format="%.0f"),
        },
    )
    cat = ui.catalogue(view).set_index("deployment_id")
    label = cat.loc[int(dep_id), "label"] if int(dep_id) in cat.index else ""
    st.page_link(
        "views/deployment.py",
        label=f"Open deployment {label}",
        query_params={"id": str(int(dep_id))},
    )


st.title("Request lookup")
st.write(
    "Paste Anthropic's `request-id` (`req_…`) or Azure's `apim-request-id` (a UUID) from the "
    "response headers. The store keeps request logs for the retention window; an id it does "
    "not have is searched in Log Analytics live (by apim-request-id: Azure's logs never see "
    "Anthropic's id), like `foundry-watch request ID --live`."
)
text = st.text_input("request-id or apim-request-id", key="fw_lookup").strip()
left, right = st.columns([3, 1])
live = left.checkbox(
    "Search Log Analytics live",
    key="fw_lookup_live",
    help="Also query Log Analytics now, even when the store has the request (fresher Azure "
    "fields). Uses the dashboard's Azure credential and needs Log Analytics Reader.",
)
days = int(
    right.number_input(
        "Live search window (days)",
        min_value=1,
        max_value=400,
        value=ui.settings().retention_days,
        key="fw_lookup_days",
        help="How far back Log Analytics is searched (default: the retention window). A "
        "shorter window answers faster and costs less.",
    )
)
if not text:
    st.stop()
try:
    key = lk.parse_id(text)
except lk.InvalidId as exc:
    st.error(plain(str(exc)))
    st.stop()

stored = ui.query(view.url, "find_request", key.value)
rows = [({k: _value(v) for k, v in r.items()}, ["store"]) for r in stored.to_dict(orient="records")]
failed = False  # Log Analytics was asked but could not answer
if live or not rows:
    if st.button("Search again", key="fw_lookup_again", help="Query Log Analytics once more."):
        st.session_state.get(_LIVE, {}).pop((view.url, key.value, live, days), None)
    answer = search_live(key, live, days)
    if "error" in answer:
        failed = True
        st.error(plain(answer["error"]))
    else:
        report: lk.Report = answer["report"]
        st.caption("Searched: " + ", ".join(report.searched))
        for note in report.notes:
            if note.startswith(("live search", "no Log Analytics workspace")):
                failed = True
                st.error(plain(note))
        if report.found:  # the store's rows again, refreshed or completed by the live ones
            rows = [(f.row, f.origin) for f in report.found]

if not rows:
    if key.kind == "request-id":
        extra = (
            " Azure's logs do not carry Anthropic's request-id: search by the apim-request-id "
            "(a UUID) of the same response, or let the collector ingest the client capture "
            "spool first."
        )
    elif failed:
        extra = " Log Analytics could not be searched (above)."
    else:
        extra = f" Log Analytics (last {days} day(s)) has none either."
    st.warning(
        f"No request with this {key.kind} in the store. It may be older than the retention "
        "window, not ingested yet (logs arrive minutes late), from a resource foundry-watch "
        "does not watch, or mistyped." + extra
    )
    st.stop()

for row, origin in rows:
    show(row, origin)

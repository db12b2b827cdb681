"""Request lookup: what happened to request ``req_…`` / apim id ``…``? (store search)"""

from __future__ import annotations

from datetime import UTC

import pandas as pd
import streamlit as st

from dashboard import queries as q
from dashboard import ui

view = ui.current()
st.title("Request lookup")
st.write(
    "Paste Anthropic's `request-id` (`req_…`) or Azure's `apim-request-id` (a UUID) from the "
    "response headers. The store keeps request logs for the retention window; "
    "`foundry-watch request ID --live` also searches Log Analytics directly."
)
text = st.text_input("request-id or apim-request-id", key="fw_lookup").strip()
if not text:
    st.stop()
kind = q.id_kind(text)
if kind is None:
    st.error(
        "That is not a request id: expected `req_` followed by letters and digits, or a UUID "
        "like `0f8fad5b-d9cb-469f-a165-70867728950e`."
    )
    st.stop()

found = ui.query(view.url, "find_request", text)
if found.empty:
    st.warning(
        f"No request with this {kind} in the store. It may be older than the retention "
        "window, not ingested yet (logs arrive minutes late), or from another resource. Try "
        "`foundry-watch request ID --live`."
    )
    st.stop()

cat = ui.catalogue(view).set_index("deployment_id")
for _, r in found.iterrows():
    status = int(r["status_code"])
    cls = q.error_class_of(status)
    when = pd.Timestamp(r["time"]).tz_convert(view.tz)
    headline = f"{status} · {r['deployment_name'] or '?'} · {when:%Y-%m-%d %H:%M:%S %Z}"
    if cls:
        st.error(headline)
        st.markdown(f"**{cls}**: {q.HINTS[cls]}")
    else:
        st.success(headline)
    details = {
        "request-id": r["request_id"] or "(unknown: Azure logs carry only the apim id)",
        "apim-request-id": r["correlation_id"],
        "time (UTC)": f"{pd.Timestamp(r['time']).tz_convert(UTC):%Y-%m-%d %H:%M:%S.%f}"[:-3],
        "resource": r["resource"],
        "region": r["region"],
        "deployment": r["deployment_name"],
        "model": r["model_name"],
        "operation": r["operation_name"],
        "status": status,
        "duration": ui.ms(r["duration_ms"]),
        "time to first token": ui.ms(r["ttft_ms"]),
        "stream": "–" if pd.isna(r["stream"]) else ("yes" if r["stream"] else "no"),
        "tokens in / out": f"{r['input_tokens'] if pd.notna(r['input_tokens']) else '–'} / "
        f"{r['output_tokens'] if pd.notna(r['output_tokens']) else '–'}",
        "caller": r["caller_ip"],
        "source": r["source"],
    }
    st.table(pd.DataFrame({"field": list(details), "value": [str(v) for v in details.values()]}))
    st.markdown("**Support bundle** (paste into a support case)")
    st.code(
        "\n".join(
            [
                f"request-id: {r['request_id'] or 'unknown'}",
                f"apim-request-id: {r['correlation_id']}",
                f"time (UTC): {details['time (UTC)']}",
                f"resource: {r['resource']} ({r['region']})",
                f"deployment: {r['deployment_name']} ({r['model_name']})",
                f"status: {status}",
            ]
        ),
        language=None,
    )
    if pd.notna(r["deployment_id"]):
        ctx = ui.query(view.url, "request_context", int(r["deployment_id"]), r["time"])
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
        label = (
            cat.loc[int(r["deployment_id"]), "label"]
            if int(r["deployment_id"]) in cat.index
            else ""
        )
        st.page_link(
            "views/deployment.py",
            label=f"Open deployment {label}",
            query_params={"id": str(int(r["deployment_id"]))},
        )

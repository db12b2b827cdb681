"""Deployment: one deployment's traffic, latency, tokens and 429 bursts over the window."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import figures, ui
from dashboard import queries as q

view = ui.current()
st.title("Deployment")
ui.window_caption(view)
if ui.no_deployments(view):
    st.stop()

cat = ui.catalogue(view).set_index("deployment_id")
options = list(view.ids)
wanted = st.query_params.get("id")
try:
    wanted_id = int(wanted) if wanted is not None else None
except ValueError:
    wanted_id = None
if wanted_id is not None and wanted_id in cat.index and wanted_id not in options:
    options.insert(0, wanted_id)  # a link from another page wins over the sidebar filter
if "fw_dep_page" in st.session_state and st.session_state["fw_dep_page"] not in options:
    del st.session_state["fw_dep_page"]
default = options.index(wanted_id) if wanted_id in options else 0
dep_id = st.selectbox(
    "Deployment",
    options,
    index=default,
    format_func=lambda i: f"{cat.loc[i, 'label']} · {cat.loc[i, 'model']}",
    key="fw_dep_page",
)
st.query_params["id"] = str(dep_id)
d = cat.loc[dep_id]

deleted = "" if pd.isna(d["deleted_at"]) else f" · **deleted** {d['deleted_at']:%Y-%m-%d %H:%M} UTC"
st.markdown(
    f"**{d['deployment']}** on resource **{d['resource']}** ({d['location']}, "
    f"resource group {d['resource_group']}) · model **{d['model']}** version "
    f"{d['version'] or '–'} · sku {d['sku'] or '–'}, capacity "
    f"{'–' if pd.isna(d['capacity']) else int(d['capacity'])} · first seen "
    f"{d['first_seen']:%Y-%m-%d %H:%M} · last seen {d['last_seen']:%Y-%m-%d %H:%M} UTC{deleted}"
)

ids = [int(dep_id)]
step = view.step
counts = ui.query(view.url, "request_counts", view.window, ids, by_deployment=False, step=step)
lat = ui.query(view.url, "latency", view.window, ids, by_deployment=False, step=step)
summary = q.summarize_counts(counts, [])
overall = ui.query(view.url, "latency", view.window, ids, by_deployment=False)

tiles = st.columns(6)
req = int(summary["requests"].iloc[0]) if not summary.empty else 0
tiles[0].metric("Requests", f"{req:,}")
tiles[1].metric("Error rate", ui.pct(summary["error_pct"].iloc[0] if req else None))
tiles[2].metric("429 rate", ui.pct(summary["throttled_pct"].iloc[0] if req else None))
for tile, p in zip(tiles[3:], ("p50", "p95", "p99"), strict=True):
    tile.metric(f"{p} latency", ui.ms(overall[p].iloc[0] if not overall.empty else None))

if counts.empty and lat.empty:
    st.info(
        "No traffic recorded for this deployment in the window: neither Azure Monitor metrics "
        "nor request logs have rows. If it should have traffic, check *Collector health*; a "
        "deployment created recently shows data after the next collection cycle."
    )
    st.stop()

per_min = step / 60
step_text = ui.step_text(step)
left, right = st.columns(2)
if not counts.empty:
    rate = counts.groupby(["t", "status_class"], as_index=False)["requests"].sum()
    rate["value"] = rate["requests"] / per_min
    left.plotly_chart(
        figures.status_bars(
            ui.local(rate, view.tz, "t"), f"Request rate by status class ({step_text})"
        ),
    )
else:
    left.info("No request metrics in this window (logs only): see latency.")
if not lat.empty:
    right.plotly_chart(
        figures.percentile_lines(
            ui.local(lat, view.tz, "t"), "Latency of successful requests: p50 / p95 / p99"
        ),
    )
else:
    right.info("No request logs in this window: percentiles need the logs source.")

left, right = st.columns(2)
azure = ui.query(view.url, "latency_metrics", view.window, ids, step=step)
if not azure.empty:
    wide = azure.pivot_table(index="t", columns="metric", values="average").reset_index()
    wide.columns.name = None
    wide = wide.rename(
        columns={q.TTLB: "time to last byte", q.NTTFT: "normalized time to first token"}
    )
    left.plotly_chart(
        figures.lines(
            ui.local(wide, view.tz, "t"),
            "Azure Monitor latency (mean per bucket)",
            "ms",
            {"time to last byte": "#3949ab", "normalized time to first token": "#00897b"},
        ),
    )
else:
    left.info("No TimeToLastByte / NormalizedTimeToFirstToken metrics in this window.")
tok = ui.query(view.url, "token_sums", view.window, ids, by_deployment=False, step=step)
if not tok.empty:
    right.plotly_chart(
        figures.lines(
            ui.local(tok, view.tz, "t"),
            f"Tokens per {step_text}",
            "tokens",
            {"tokens_in": "#1e88e5", "tokens_out": "#43a047", "cache_read": "#8d6e63"},
        ),
    )
else:
    right.info("No token metrics in this window.")

if not counts.empty:
    per_t = q.summarize_counts(counts, ["t"]).sort_values("t")
    bursts = q.throttle_bursts(per_t)
    st.plotly_chart(
        figures.throttle_bars(ui.local(per_t, view.tz, "t"), bursts, step),
    )
    if bursts:
        st.caption(
            f"{len(bursts)} burst(s) where ≥ 5 % of requests got 429. Spread load, honour "
            "Retry-After, or raise the deployment's quota."
        )
    export = per_t.merge(lat, on="t", how="outer") if not lat.empty else per_t
    ui.download(ui.local(export, view.tz, "t"), f"deployment_{dep_id}")

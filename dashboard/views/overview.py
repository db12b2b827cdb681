"""Overview: is Claude healthy right now, and which deployment is not?"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from dashboard import figures, ui
from dashboard import queries as q

#: "Worst now" ignores deployments with fewer requests than this in the last hour (noise).
MIN_REQUESTS = 20
ALERT_PCT = 5.0

view = ui.current()
st.title("Overview")
ui.window_caption(view)
if ui.no_deployments(view):
    st.stop()

cat = ui.catalogue(view)
# One read for tiles, table, previous period and spend: the window's counts and tokens serve
# the table and the spend estimate alike (queries.overview_page).
page = ui.query(
    view.url,
    "overview_page",
    view.window,
    view.ids,
    cat,
    view.now.replace(second=0, microsecond=0),
)
now_k, table, prev_k = page["tiles"], page["table"], page["previous"]

# Spend month to date (UTC month) of the selection, against the budget that covers everything.
money = page["money"]
mtd, currency = money["mtd"], money["currency"]
budget_text = None
if not money["budgets"].empty and not view.filtered:
    b = money["budgets"].iloc[0]
    budget_text = f"{b['mtd_pct']:.0f} % of budget {b['name']} ({b['amount']:,.0f} {b['currency']})"
    if pd.notna(b["forecast_pct"]):
        budget_text += f", forecast {b['forecast_pct']:.0f} %"

tiles = [*st.columns(4), *st.columns(4)]
tiles[0].metric(
    "Requests",
    f"{int(now_k['requests']):,}",
    ui.delta(now_k["requests"], prev_k["requests"]),
)
tiles[1].metric(
    "Error rate",
    ui.pct(now_k["error_pct"]),
    ui.delta(now_k["error_pct"], prev_k["error_pct"], "pp"),
    delta_color="inverse",
    help="4xx and 5xx responses other than 429, as a share of all requests.",
)
tiles[2].metric(
    "429 rate",
    ui.pct(now_k["throttled_pct"]),
    ui.delta(now_k["throttled_pct"], prev_k["throttled_pct"], "pp"),
    delta_color="inverse",
)
tiles[3].metric(
    "p95 latency",
    ui.ms(now_k["p95_ms"]),
    ui.delta(now_k["p95_ms"], prev_k["p95_ms"]),
    delta_color="inverse",
    help="95th percentile duration of successful requests (request logs).",
)
tiles[4].metric(
    "Tokens in", ui.count(now_k["tokens_in"]), ui.delta(now_k["tokens_in"], prev_k["tokens_in"])
)
tiles[5].metric(
    "Tokens out",
    ui.count(now_k["tokens_out"]),
    ui.delta(now_k["tokens_out"], prev_k["tokens_out"]),
)
tiles[6].metric(
    f"Spend month to date ({currency})",
    f"{mtd:,.2f}",
    budget_text,
    delta_color="off",
    help="Billed where Cost Management has reported, estimated from tokens otherwise (UTC).",
)

# ---------------------------------------------------------------- worst now
st.subheader("Worst in the last hour")
last_hour = q.Window(view.window.end - timedelta(hours=1), view.window.end, True)
recent = q.with_labels(ui.query(view.url, "worst_now", last_hour, view.ids), cat)
busy = recent[recent["requests"] >= MIN_REQUESTS]
cols = st.columns(3)
if busy.empty:
    cols[0].info(
        f"No deployment served {MIN_REQUESTS}+ requests in the last hour: nothing to rank."
    )
else:
    for col, metric, name, fmt in (
        (cols[0], "throttled_pct", "429 rate", ui.pct),
        (cols[1], "error_pct", "error rate", ui.pct),
        (cols[2], "p95", "p95 latency", ui.ms),
    ):
        ranked = busy.dropna(subset=[metric]).sort_values(metric, ascending=False)
        if ranked.empty:
            col.info(f"No {name} data in the last hour.")
            continue
        top = ranked.iloc[0]
        text = f"**{top['label']}**: {name} {fmt(top[metric])} ({int(top['requests']):,} requests)"
        hot = metric != "p95" and top[metric] >= ALERT_PCT
        if hot:
            col.error(text, icon="🔥")
        elif metric != "p95" and top[metric] == 0:
            col.success(f"No {name.split()[0]}s in the last hour.")
        elif metric == "p95":
            col.warning(text)
        else:
            col.info(text)

# ---------------------------------------------------------------- per deployment
st.subheader("Per deployment")
table = table.merge(money["per_deployment"], on="deployment_id", how="left")
table["details"] = "deployment?id=" + table["deployment_id"].astype(str)
shown = table[
    [
        "details",
        "label",
        "resource",
        "model",
        "requests",
        "p50",
        "p95",
        "p99",
        "error_pct",
        "throttled_pct",
        "tokens_in",
        "tokens_out",
        "estimated",
        "billed",
        "source",
    ]
].rename(columns={"label": "deployment"})
st.dataframe(
    shown,
    hide_index=True,
    column_config={
        "details": st.column_config.LinkColumn("", display_text="open →", width="small"),
        "requests": st.column_config.NumberColumn(format="%d"),
        "p50": st.column_config.NumberColumn("p50 ms", format="%.0f"),
        "p95": st.column_config.NumberColumn("p95 ms", format="%.0f"),
        "p99": st.column_config.NumberColumn("p99 ms", format="%.0f"),
        "error_pct": st.column_config.NumberColumn("error %", format="%.2f"),
        "throttled_pct": st.column_config.NumberColumn("429 %", format="%.2f"),
        "tokens_in": st.column_config.NumberColumn("tokens in", format="%d"),
        "tokens_out": st.column_config.NumberColumn("tokens out", format="%d"),
        "estimated": st.column_config.NumberColumn(
            f"est. spend ({currency})", format="%.2f", help="Tokens in the window × price."
        ),
        "billed": st.column_config.NumberColumn(
            f"billed ({currency})",
            format="%.2f",
            help="Cost Management, for the UTC days the window touches (arrives 1–3 days late).",
        ),
        "source": st.column_config.TextColumn(
            "counted from", help="metrics (Azure Monitor) or logs when metrics are missing"
        ),
    },
)
ui.download(shown.drop(columns=["details"]), "deployments")

# ---------------------------------------------------------------- traffic over time
counts = ui.query(
    view.url, "request_counts", view.window, view.ids, by_deployment=False, step=view.step
)
if counts.empty:
    st.info(
        "No request metrics in this window. If deployments should have traffic, check "
        "*Collector health* (the metrics source needs Monitoring Reader)."
    )
else:
    per_min = view.step / 60
    series = counts.groupby(["t", "status_class"], as_index=False)["requests"].sum()
    series["value"] = series["requests"] / per_min
    series = ui.local(series, view.tz, "t")
    step_text = ui.step_text(view.step)
    st.plotly_chart(
        figures.status_bars(series, f"Requests per minute by status class ({step_text} buckets)"),
    )
    ui.download(pd.DataFrame(series), "requests_by_status")

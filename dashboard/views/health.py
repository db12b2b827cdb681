"""Collector health: is the collector keeping up, what did it fetch, what failed?"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import figures, ui

view = ui.current()
st.title("Collector health")
ui.window_caption(view)

current, head = ui.query(view.url, "schema_state")
if current != head:
    st.warning(
        f"Store schema is {current or 'missing'}, this code expects {head}: run "
        "`foundry-watch db upgrade`."
    )

fresh = ui.query(view.url, "freshness", view.now.replace(second=0, microsecond=0), view.intervals)
st.subheader("Freshness per source")
shown = fresh.assign(
    last_ok=fresh["last_ok"],
    age=fresh["age_s"].map(ui.ago),
    stale_after=fresh["stale_after_s"].map(ui.ago),
)[["source", "state", "last_ok", "age", "stale_after"]]
shown["stale scopes"] = [
    "; ".join(f"{x['scope']}: {x['error'] or x['status']}" for x in scopes)
    for scopes in fresh["stale_scopes"]
]
st.dataframe(
    ui.local(shown, view.tz, "last_ok"),
    hide_index=True,
    column_config={
        "last_ok": st.column_config.DatetimeColumn("last good run", format="YYYY-MM-DD HH:mm"),
        "stale_after": st.column_config.TextColumn("stale after"),
    },
)

last = ui.query(view.url, "last_runs")
st.subheader("Last run per source and scope")
if last.empty:
    st.info(
        "No collector runs recorded yet. Start the collector with `foundry-watch collect` (or "
        "`make demo` for the emulator); `foundry-watch doctor` checks access first."
    )
    st.stop()
now = pd.Timestamp(view.now)
last = last.assign(
    lag=(now - pd.to_datetime(last["window_end"], utc=True)).dt.total_seconds().map(ui.ago),
    age=(now - pd.to_datetime(last["finished_at"], utc=True)).dt.total_seconds().map(ui.ago),
)
cols = ["job", "scope", "status", "finished_at", "age", "lag", "rows", "api_calls"]
cols += ["duration_ms", "error"]
last = ui.local(last[cols], view.tz, "finished_at")
st.dataframe(
    last,
    hide_index=True,
    column_config={
        "lag": st.column_config.TextColumn("data lag", help="now − end of the run's window"),
        "age": st.column_config.TextColumn("finished ago"),
        "duration_ms": st.column_config.NumberColumn("ms", format="%.0f"),
        **ui.time_config("finished_at"),
    },
)
ui.download(last, "last_runs")

runs = ui.query(view.url, "runs", view.window.start)
failures = runs[runs["status"].isin(["failed", "partial"])]
st.subheader(f"Failures in the window ({len(failures)})")
if failures.empty:
    st.success("No failed or partial runs in this window.")
else:
    st.dataframe(
        ui.local(
            failures[["started_at", "job", "scope", "status", "error"]], view.tz, "started_at"
        ),
        hide_index=True,
        column_config=ui.time_config("started_at"),
    )
    ui.download(failures, "failed_runs")

st.subheader("Runs in the window")
if runs.empty:
    st.info("No runs started in this window.")
else:
    st.plotly_chart(figures.run_bars(ui.local(runs, view.tz, "started_at")))
    per_job = runs.groupby("job", as_index=False).agg(
        runs=("id", "count"),
        failed=("status", lambda s: int((s == "failed").sum())),
        rows=("rows", "sum"),
        api_calls=("api_calls", "sum"),
        mean_ms=("duration_ms", "mean"),
    )
    st.dataframe(
        per_job,
        hide_index=True,
        column_config={"mean_ms": st.column_config.NumberColumn("mean ms", format="%.0f")},
    )
    ui.download(runs, "runs")

marks = ui.query(view.url, "watermarks", view.now)
st.subheader("Watermarks")
if marks.empty:
    st.info("No watermarks yet: no source has completed a window.")
else:
    marks = marks.assign(lag=marks["lag_s"].map(ui.ago))
    st.dataframe(
        ui.local(
            marks[["source", "scope", "high_water", "lag", "updated_at"]],
            view.tz,
            "high_water",
            "updated_at",
        ),
        hide_index=True,
    )

alerts = ui.query(view.url, "alert_events", view.window.start)
if not alerts.empty:
    st.subheader("Alerts fired in the window")
    st.dataframe(ui.local(alerts, view.tz, "fired_at"), hide_index=True)

"""Collector health: is the collector keeping up, what did it fetch, what failed?"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import figures, ui

view = ui.current()


def _rules_configured() -> str:
    """How many operational rules the settings define (the store does not keep them)."""
    from alerts.config import load_alert_config

    try:  # also registers the channels' secrets, so error lines are scrubbed of them too
        config = load_alert_config(ui.settings())
    except Exception as exc:  # a ConfigError is one line; anything else must not break the page
        return f"the alert settings do not load ({str(exc).splitlines()[0] if str(exc) else exc})"
    return f"operational rules configured: {len(config.alerts.rules)}"


def alert_sections() -> None:
    """Operational alerts (429 rate, error rate, p95, staleness) of the range, open or
    resolved, and every delivery that did not reach its channel (channel names only)."""
    configured = _rules_configured()
    start, end = view.window.start, view.window.end
    st.subheader("Operational alerts")
    ops = ui.query(view.url, "operational_alerts", start, end)
    if ops.empty:
        runs = ui.query(view.url, "last_runs")
        done = runs[runs["job"] == "alerts"]["finished_at"].dropna() if not runs.empty else []
        if len(done):
            age = (pd.Timestamp(view.now) - pd.to_datetime(done, utc=True).max()).total_seconds()
            last = f"the alerts job last checked {ui.ago(age)} ago"
        else:
            last = "the alerts job has not run in this store yet"
        st.info(
            f"No operational alerts fired or open in this range; {configured}; {last}. Rules "
            "(429 rate, error rate, p95 latency, data staleness) are `[[alerts.rules]]` in the "
            "config file — see README Alerts."
        )
    else:
        n_open = int((ops["state"] == "open").sum())
        if n_open:
            st.error(f"{n_open} open operational alert(s); {len(ops) - n_open} resolved.")
        else:
            st.success(f"{len(ops)} operational alert(s) in this range, all resolved.")
        st.dataframe(
            ui.local(ops, view.tz, "fired_at", "resolved_at"),
            hide_index=True,
            column_config={
                **ui.time_config("fired_at", "resolved_at"),
                "value": st.column_config.NumberColumn("value at firing", format="%.2f"),
                "resolved_value": st.column_config.NumberColumn("value at resolve", format="%.2f"),
                "delivery": st.column_config.TextColumn("delivery per channel"),
            },
        )
        ui.download(ops, "operational_alerts")
    st.subheader("Failed alert deliveries")
    failed = ui.query(view.url, "failed_deliveries", start, end)
    if failed.empty:
        st.success("No failed alert deliveries in this range.")
        return
    st.warning(
        f"{len(failed)} alert delivery(ies) did not reach their channel. A failed delivery is "
        "retried on the next checks (`[alerts] max_attempts`); `foundry-watch alerts test "
        "CHANNEL` sends a test message."
    )
    st.dataframe(
        ui.local(failed, view.tz, "fired_at"),
        hide_index=True,
        column_config={
            **ui.time_config("fired_at"),
            "fired_at": st.column_config.DatetimeColumn("alert fired", format="YYYY-MM-DD HH:mm"),
        },
    )
    ui.download(failed, "failed_deliveries")


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


def _why_stale(scope: dict) -> str:
    """A stale scope's reason: its error line, else how long since its last good run."""
    if scope["error"]:
        return f"{scope['scope']}: {scope['error']}"
    if scope["age_s"] is None:
        return f"{scope['scope']}: no good run yet (last: {scope['status']})"
    return f"{scope['scope']}: last good run {ui.ago(scope['age_s'])} ago"


shown["stale scopes"] = ["; ".join(map(_why_stale, scopes)) for scopes in fresh["stale_scopes"]]
st.dataframe(
    ui.local(shown, view.tz, "last_ok"),
    hide_index=True,
    column_config={
        "last_ok": st.column_config.DatetimeColumn(
            "newest good run", format="YYYY-MM-DD HH:mm", help="over all scopes of the source"
        ),
        "age": st.column_config.TextColumn(
            "oldest scope behind", help="'never': some scope has not had a good run yet"
        ),
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
    alert_sections()
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

alert_sections()

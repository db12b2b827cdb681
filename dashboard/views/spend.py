"""Spend: billed and estimated per deployment and resource, budgets, unit costs, meters."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from dashboard import figures, ui
from dashboard import queries as q

view = ui.current()


def budget_alerts() -> None:
    """The budget alerts (actual and forecast crossings) fired in the range, as stored by the
    alerts job: value, threshold, when, and what each channel got."""
    st.subheader("Budget alerts in this range")
    fired = ui.query(
        view.url,
        "budget_alerts",
        view.window.start,
        view.window.end,
        view.ids if view.filtered else None,
    )
    if fired.empty:
        n = ui.query(view.url, "budget_count")
        scope = " covering the selected deployments" if view.filtered else ""
        if n:
            st.info(
                f"No budget alerts fired{scope} in this range; budgets configured: {n}. "
                "Budgets are checked every few minutes by the collector's alerts job (and by "
                "`foundry-watch alerts check`); each threshold fires once per month."
            )
        else:
            st.info(
                "No budgets configured — see README Alerts: add `[[budgets]]` to the config "
                "file; the collector's alerts job (or `foundry-watch alerts check`) evaluates "
                "them and records every crossing here."
            )
        return
    sent = fired["delivery"].str.contains(": sent").sum()
    st.caption(
        f"{len(fired)} alert(s), {sent} delivered to at least one channel. **actual** = month "
        "to date crossed the threshold, **forecast** = the month-end forecast will; value = "
        "% of the monthly budget when it fired. Several thresholds crossed in one check are "
        "all recorded, only the highest is sent."
    )
    pct_fmt = st.column_config.NumberColumn(format="%.1f %%")
    st.dataframe(
        ui.local(fired, view.tz, "fired_at"),
        hide_index=True,
        column_config={
            **ui.time_config("fired_at"),
            "threshold_pct": st.column_config.NumberColumn("threshold", format="%g %%"),
            "value_pct": pct_fmt,
            "spend": st.column_config.NumberColumn("spend at alert", format="%.2f"),
            "budget_amount": st.column_config.NumberColumn("budget", format="%.2f"),
            "delivery": st.column_config.TextColumn("delivery per channel"),
        },
    )
    ui.download(fired, "budget_alerts")


st.title("Spend")
ui.window_caption(view)
if ui.no_deployments(view):
    st.stop()

cat = ui.catalogue(view)
first = view.window.start.date()
last = (view.window.end - timedelta(microseconds=1)).date()
st.caption(
    f"Spend is per UTC day: {first} → {last}. **Billed** = Cost Management (Claude is billed "
    "per resource group and model through Marketplace; split across the group's deployments "
    "by priced-token share); **estimated** = token metrics × the prices table, shown where the "
    "bill has not arrived yet (usually the last 1–3 days)."
)
# One read serves the range and every budget (which may cover other deployments and days).
spent = ui.query(
    view.url, "spend_view", first, last, view.ids, view.now.replace(second=0, microsecond=0)
)
daily = spent["daily"]
if daily.empty:
    st.info(
        "No spend data in this range. Estimated spend needs token metrics (metrics source); "
        "billed spend needs the costs source (Cost Management Reader), and arrives 1–3 days "
        "late."
    )
    budget_alerts()
    st.stop()

currency = daily["currency"].replace("", pd.NA).dropna()
currency = currency.iloc[0] if not currency.empty else "USD"
billed_days = daily[daily["billed"].notna()]
tiles = st.columns(4)
tiles[0].metric("Spend in range", ui.money(daily["spend"].sum(), currency))
tiles[1].metric("Billed", ui.money(daily["billed"].sum(min_count=1), currency))
tiles[2].metric(
    "Estimated (not yet billed)",
    ui.money(daily.loc[daily["billed"].isna(), "estimated"].sum(), currency),
)
gap = billed_days["gap"].sum(min_count=1)
est_on_billed = billed_days["estimated"].sum()
tiles[3].metric(
    "Reconciliation gap",
    ui.money(gap, currency),
    f"{100 * gap / est_on_billed:+.1f} % vs estimate" if pd.notna(gap) and est_on_billed else None,
    delta_color="off",
    help="Billed − estimated over the days that have a bill: prices or token counts disagree.",
)

# ---------------------------------------------------------------- daily charts
labelled = q.with_labels(daily.dropna(subset=["deployment_id"]), cat)
for column in ("model", "resource"):  # a range whose bills could not be split has none
    if column not in labelled.columns:
        labelled[column] = pd.Series(dtype=str)
unattributed = daily[daily["deployment_id"].isna()]
if not unattributed.empty:
    st.warning(
        f"{ui.money(unattributed['billed'].sum(), currency)} billed to resource group(s) "
        f"{', '.join(sorted(set(unattributed['bill_group'].dropna())))} had no tokens in the "
        "store that day, so it cannot be split across deployments."
    )
chart = labelled[["day", "label", "spend", "basis"]].copy()
# Money arrives as Decimal (exact in tables); charts and ranking want plain floats.
chart["spend"] = pd.to_numeric(chart["spend"], errors="coerce").astype(float)
if chart["label"].nunique() > figures.TOP_N:
    top = chart.groupby("label")["spend"].sum().nlargest(figures.TOP_N).index
    chart.loc[~chart["label"].isin(top), "label"] = figures.OTHERS
    chart = chart.groupby(["day", "label", "basis"], as_index=False)["spend"].sum()
st.plotly_chart(
    figures.deployment_bars(
        chart, "day", "spend", "Daily spend per deployment (hatched = estimated)", pattern="basis"
    ),
)
by_resource = labelled.groupby(["day", "resource", "basis"], as_index=False)["spend"].sum()
by_resource = by_resource.rename(columns={"resource": "label"})
st.plotly_chart(
    figures.deployment_bars(
        by_resource,
        "day",
        "spend",
        "Daily spend per resource (hatched = estimated)",
        pattern="basis",
    ),
)

# ---------------------------------------------------------------- per deployment
st.subheader("Per deployment: reconciliation and unit costs")
days = q.Window(
    pd.Timestamp(first, tz="UTC").to_pydatetime(),
    pd.Timestamp(last + timedelta(days=1), tz="UTC").to_pydatetime(),
)
reqs = q.summarize_counts(ui.query(view.url, "request_counts", days, view.ids), ["deployment_id"])[
    ["deployment_id", "requests"]
]
per = labelled.groupby(["deployment_id", "label", "model"], as_index=False).agg(
    spend=("spend", "sum"),
    estimated=("estimated", "sum"),
    billed=("billed", lambda s: s.sum(min_count=1)),
    tokens=("tokens", "sum"),
)
gaps = labelled.dropna(subset=["billed"]).groupby("deployment_id")["gap"].sum()
per["gap"] = per["deployment_id"].map(gaps)
per["deployment_id"] = per["deployment_id"].astype("int64")  # float/object when empty
reqs = reqs.astype({"deployment_id": "int64"})
per = per.merge(reqs, on="deployment_id", how="left")
per["requests"] = per["requests"].fillna(0).astype("int64")
per["per_1k_requests"] = 1000 * per["spend"] / per["requests"].where(per["requests"] > 0)
per["per_1m_tokens"] = 1e6 * per["spend"] / per["tokens"].where(per["tokens"] > 0)
per = per.sort_values("spend", ascending=False)
shown = per[
    [
        "label",
        "model",
        "spend",
        "billed",
        "estimated",
        "gap",
        "requests",
        "tokens",
        "per_1k_requests",
        "per_1m_tokens",
    ]
].rename(columns={"label": "deployment"})
money_fmt = st.column_config.NumberColumn(format="%.2f")
st.dataframe(
    shown,
    hide_index=True,
    column_config={
        "spend": money_fmt,
        "billed": money_fmt,
        "estimated": money_fmt,
        "gap": st.column_config.NumberColumn("gap (billed − est.)", format="%.2f"),
        "per_1k_requests": st.column_config.NumberColumn(
            f"{currency} / 1K requests", format="%.4f"
        ),
        "per_1m_tokens": st.column_config.NumberColumn(f"{currency} / 1M tokens", format="%.4f"),
    },
)
ui.download(shown, "spend_per_deployment")
ui.download(
    q.with_labels(daily, cat).drop(columns=["bill_model"], errors="ignore"),
    "spend_daily",
    "Download daily CSV",
)

# ---------------------------------------------------------------- budgets
st.subheader("Budgets: month to date and forecast")
frame = spent["budgets"]
for problem in spent["problems"]:
    st.warning(problem)
if frame.empty:
    st.info(
        "No budgets defined. Add `[[budgets]]` to the config file (see `foundry-watch alerts "
        "list`) to see month-to-date and forecast against each."
    )
else:
    st.plotly_chart(figures.budget_bars(frame))
    st.dataframe(
        frame,
        hide_index=True,
        column_config={
            "mtd": st.column_config.NumberColumn("month to date", format="%.2f"),
            "forecast": st.column_config.NumberColumn("forecast month-end", format="%.2f"),
            "mtd_pct": st.column_config.NumberColumn("MTD %", format="%.1f"),
            "forecast_pct": st.column_config.NumberColumn("forecast %", format="%.1f"),
            "known_through": st.column_config.DateColumn("complete through"),
        },
    )
    st.caption(
        "Evaluated exactly as the budget alerts do (their month in their time zone; "
        "forecast: the month so far + a day-of-week-weighted run rate of the last 14 complete "
        "days; none before 7 days of history)."
    )
    ui.download(frame, "budgets")

# ---------------------------------------------------------------- meters and alerts
st.subheader("Top meters")
meters = ui.query(view.url, "top_meters", first, last)
if meters.empty:
    st.info("No billed rows from Cost Management in this range yet.")
else:
    st.dataframe(meters, hide_index=True)
    ui.download(meters, "top_meters")
budget_alerts()

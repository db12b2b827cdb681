"""Errors & throttling: which failures, where, when, and what to do about each class."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import figures, ui
from dashboard import queries as q

view = ui.current()
st.title("Errors & throttling")
ui.window_caption(view)
if ui.no_deployments(view):
    st.stop()

cat = ui.catalogue(view)
# Small answers only: per deployment (no time), per time (no deployment), and ranked/limited
# (deployment × time) views, so 30 days × hundreds of deployments stays a few thousand rows.
per_dep_codes = ui.query(view.url, "request_counts", view.window, view.ids)
if per_dep_codes.empty:
    st.info(
        "No request metrics in this window, so no status codes to break down. Check "
        "*Collector health* if deployments should have traffic."
    )
    st.stop()
series_codes = ui.query(
    view.url, "request_counts", view.window, view.ids, by_deployment=False, step=view.step
)

failed = per_dep_codes[per_dep_codes["error_class"].notna()]
total = int(per_dep_codes["requests"].sum())
by_class = failed.groupby("error_class")["requests"].sum()
tiles = st.columns(len(q.ERROR_CLASSES) + 1)
tiles[0].metric("Requests", f"{total:,}")
for tile, cls in zip(tiles[1:], q.ERROR_CLASSES, strict=True):
    n = int(by_class.get(cls, 0))
    tile.metric(cls, f"{n:,}", f"{100 * n / total:.2f} %" if total else None, delta_color="off")

if failed.empty:
    st.success("No failed requests in this window.")
else:
    series = series_codes[series_codes["error_class"].notna()]
    series = series.groupby(["t", "error_class"], as_index=False)["requests"].sum()
    step_text = ui.step_text(view.step)
    st.plotly_chart(
        figures.error_bars(
            ui.local(series, view.tz, "t"), f"Failed requests by class ({step_text} buckets)"
        )
    )

# ---------------------------------------------------------------- per deployment
st.subheader("Per deployment")
wide = failed.pivot_table(
    index="deployment_id", columns="error_class", values="requests", aggfunc="sum"
)
summary = q.summarize_counts(per_dep_codes, ["deployment_id"]).set_index("deployment_id")
table = summary[["requests", "error_pct", "throttled_pct"]].join(wide)
for cls in q.ERROR_CLASSES:
    table[cls] = table[cls].fillna(0).astype("int64") if cls in table.columns else 0
table = q.with_labels(table.reset_index(), cat)
table = table[["label", "model", "requests", "error_pct", "throttled_pct", *q.ERROR_CLASSES]]
table = table.sort_values(["throttled_pct", "error_pct"], ascending=False)
st.dataframe(
    table.rename(columns={"label": "deployment", "error_pct": "error %", "throttled_pct": "429 %"}),
    hide_index=True,
    column_config={
        "error %": st.column_config.NumberColumn(format="%.2f"),
        "429 %": st.column_config.NumberColumn(format="%.2f"),
    },
)
ui.download(table, "errors_per_deployment")

# ---------------------------------------------------------------- top error minutes
unit, top = ui.query(view.url, "top_error_times", view.window, view.ids)
st.subheader(f"Top error {unit}s")
if top.empty:
    st.info("No failed requests to rank.")
else:
    top = ui.local(q.with_labels(top, cat), view.tz, "t")
    top = top[["t", "label", "failed", "errors", "throttled", "requests", "error_pct"]]
    st.dataframe(
        top.rename(columns={"t": unit, "label": "deployment", "throttled": "429s"}),
        hide_index=True,
        column_config={
            "error_pct": st.column_config.NumberColumn("error %", format="%.2f"),
            **ui.time_config(unit),
        },
    )
    if unit == "hour":
        st.caption("Over windows longer than a day the ranking is per hour (hour rollups).")
    ui.download(top, "top_error_times")

# ---------------------------------------------------------------- 429 vs traffic
st.subheader("Is it capacity? 429 share vs traffic")
if int(by_class.get("429", 0)) == 0:
    st.success("No 429s in this window.")
else:
    busiest = summary.sort_values("throttled", ascending=False).head(figures.TOP_N).index
    per = ui.query(view.url, "status_totals", view.window, tuple(busiest), step=view.step)
    per = q.with_labels(per[per["requests"] > 0], cat)
    st.plotly_chart(
        figures.share_scatter(
            ui.local(per, view.tz, "t"), "429 % per bucket vs requests in that bucket"
        )
    )
    corr = per[["requests", "throttled_pct"]].corr().iloc[0, 1]
    verdict = (
        "429s rise with traffic: the deployments are hitting their rate limit (capacity)."
        if pd.notna(corr) and corr > 0.3
        else "429s do not track traffic closely: look for bursts or a shared quota."
    )
    shown = f"{corr:.2f}" if pd.notna(corr) else "n/a"
    st.caption(
        f"The {len(busiest)} most throttled deployments. Correlation of 429 % with traffic: "
        f"{shown}. {verdict}"
    )

# ---------------------------------------------------------------- what to do
st.subheader("What to check")
present = [c for c in q.ERROR_CLASSES if by_class.get(c, 0) > 0]
for cls in present:
    st.markdown(f"- **{cls}** ({int(by_class[cls]):,}): {q.HINTS[cls]}")
with st.expander("All error classes"):
    st.table(pd.DataFrame({"class": list(q.HINTS), "check": list(q.HINTS.values())}))

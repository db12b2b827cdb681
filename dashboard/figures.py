"""Plotly figure builders with one colour per status class and per deployment, everywhere.

Why fixed colours: at 3 a.m. "purple = 429" must mean the same on every chart, and a
deployment must keep its colour when filters change, so deployment colours come from a hash of
its label, not from its position in the current selection.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

STATUS_COLORS = {
    "2xx": "#2e7d32",
    "4xx": "#ef6c00",
    "429": "#8e24aa",
    "5xx": "#c62828",
    "other": "#757575",
}
ERROR_COLORS = {
    "401": "#f9a825",
    "403": "#6d4c41",
    "404": "#00838f",
    "429": STATUS_COLORS["429"],
    "4xx": STATUS_COLORS["4xx"],
    "5xx": STATUS_COLORS["5xx"],
}
PERCENTILE_COLORS = {"p50": "#1e88e5", "p95": "#fb8c00", "p99": "#d81b60"}
_PALETTE = px.colors.qualitative.Dark24 + px.colors.qualitative.Light24
OTHERS = "others"
OTHERS_COLOR = "#b0b0b0"
#: At most this many deployments get their own trace; the rest are summed as "others".
TOP_N = 12


def deployment_color(label: str) -> str:
    if label == OTHERS:
        return OTHERS_COLOR
    return _PALETTE[zlib.crc32(label.encode()) % len(_PALETTE)]


def deployment_colors(labels: Sequence[str]) -> dict[str, str]:
    return {label: deployment_color(label) for label in labels}


def top_n_labels(frame: pd.DataFrame, value: str, n: int = TOP_N) -> pd.DataFrame:
    """Keep the ``n`` largest labels by total ``value``; fold the rest into "others"."""
    if frame.empty or frame["label"].nunique() <= n:
        return frame
    out = frame.copy()
    out[value] = pd.to_numeric(out[value], errors="coerce").astype(float)  # Decimal money too
    top = out.groupby("label")[value].sum().nlargest(n).index
    out.loc[~out["label"].isin(top), "label"] = OTHERS
    keys = [c for c in out.columns if c not in (value,) and out[c].dtype == object]
    keys = [c for c in ("t", "day", "label") if c in out.columns] or keys
    return out.groupby(keys, as_index=False)[value].sum()


def _layout(fig: go.Figure, title: str, y: str, height: int = 320) -> go.Figure:
    fig.update_layout(
        title=title,
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": -0.2, "title": {"text": ""}},
        yaxis_title=y,
        xaxis_title=None,
        hovermode="x unified",
    )
    return fig


def status_bars(frame: pd.DataFrame, title: str, y: str = "requests/min") -> go.Figure:
    """Stacked bars per time bucket, one colour per status class (frame: t, status_class, v)."""
    fig = px.bar(
        frame,
        x="t",
        y="value",
        color="status_class",
        color_discrete_map=STATUS_COLORS,
        category_orders={"status_class": list(STATUS_COLORS)},
    )
    return _layout(fig, title, y)


def error_bars(frame: pd.DataFrame, title: str, x: str = "t") -> go.Figure:
    fig = px.bar(
        frame,
        x=x,
        y="requests",
        color="error_class",
        color_discrete_map=ERROR_COLORS,
        category_orders={"error_class": list(ERROR_COLORS)},
    )
    return _layout(fig, title, "requests")


def percentile_lines(frame: pd.DataFrame, title: str) -> go.Figure:
    """p50/p95/p99 lines with the p50–p99 band shaded (frame: t, p50, p95, p99 in ms)."""
    fig = go.Figure()
    if not frame.empty:
        fig.add_trace(
            go.Scatter(
                x=frame["t"], y=frame["p99"], line={"width": 0}, showlegend=False, hoverinfo="skip"
            )
        )
        fig.add_trace(
            go.Scatter(
                x=frame["t"],
                y=frame["p50"],
                fill="tonexty",
                fillcolor="rgba(251,140,0,0.12)",
                line={"width": 0},
                showlegend=False,
                hoverinfo="skip",
            )
        )
        for p in ("p50", "p95", "p99"):
            fig.add_trace(
                go.Scatter(
                    x=frame["t"],
                    y=frame[p],
                    name=p,
                    mode="lines",
                    line={"color": PERCENTILE_COLORS[p], "width": 2 if p == "p95" else 1.5},
                )
            )
    return _layout(fig, title, "ms")


def lines(frame: pd.DataFrame, title: str, y: str, columns: dict[str, str]) -> go.Figure:
    """One line per column (name → colour)."""
    fig = go.Figure()
    for col, color in columns.items():
        if col in frame.columns:
            fig.add_trace(go.Scatter(x=frame["t"], y=frame[col], name=col, line={"color": color}))
    return _layout(fig, title, y)


def throttle_bars(frame: pd.DataFrame, bursts: list[tuple[Any, Any]], step_s: int) -> go.Figure:
    """429s per bucket, with bursts (runs of buckets ≥ 5 % throttled) shaded."""
    fig = go.Figure(
        go.Bar(x=frame["t"], y=frame["throttled"], marker_color=STATUS_COLORS["429"], name="429")
    )
    for start, end in bursts:
        fig.add_vrect(
            x0=start,
            x1=end + pd.Timedelta(seconds=step_s),
            fillcolor=STATUS_COLORS["429"],
            opacity=0.12,
            line_width=0,
        )
    return _layout(fig, f"429s ({len(bursts)} burst(s) shaded)", "429 responses")


def deployment_bars(
    frame: pd.DataFrame, x: str, y: str, title: str, *, pattern: str | None = None
) -> go.Figure:
    """Bars coloured per deployment label (top N + others); optional pattern column."""
    labels = list(dict.fromkeys(frame["label"])) if not frame.empty else []
    fig = px.bar(
        frame,
        x=x,
        y=y,
        color="label",
        color_discrete_map=deployment_colors(labels),
        pattern_shape=pattern,
        pattern_shape_map={"estimated": "/", "billed": ""} if pattern else None,
    )
    if pattern:
        # One legend entry per deployment (the hatching is explained in the title).
        seen: set[str] = set()
        for trace in fig.data:
            label = trace.name.rsplit(", ", 1)[0]
            trace.update(name=label, legendgroup=label, showlegend=label not in seen)
            seen.add(label)
    fig = _layout(fig, title, y)
    fig.update_layout(legend_title_text="")
    return fig


def share_scatter(frame: pd.DataFrame, title: str) -> go.Figure:
    """429 share vs traffic per bucket and deployment: a rising cloud means capacity."""
    labels = list(dict.fromkeys(frame["label"])) if not frame.empty else []
    fig = px.scatter(
        frame,
        x="requests",
        y="throttled_pct",
        color="label",
        color_discrete_map=deployment_colors(labels),
        hover_data=["t"],
    )
    fig.update_layout(xaxis_title="requests in the bucket")
    return _layout(fig, title, "429 %")


def budget_bars(frame: pd.DataFrame) -> go.Figure:
    """Month-to-date and forecast against each budget's amount."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=frame["name"], y=frame["mtd"], name="month to date"))
    fig.add_trace(go.Bar(x=frame["name"], y=frame["forecast"], name="forecast", opacity=0.45))
    fig.add_trace(
        go.Scatter(
            x=frame["name"],
            y=frame["amount"],
            mode="markers",
            marker={
                "symbol": "line-ew-open",
                "size": 80,
                "color": "#c62828",
                "line": {"width": 4, "color": "#c62828"},
            },
            name="budget",
        )
    )
    fig.update_layout(barmode="overlay")
    return _layout(fig, "Budgets: month to date and forecast", frame["currency"].iloc[0])


def run_bars(frame: pd.DataFrame) -> go.Figure:
    fig = px.bar(
        frame,
        x="started_at",
        y="rows",
        color="job",
        hover_data=["scope", "status", "api_calls", "duration_ms"],
    )
    return _layout(fig, "Rows written per run", "rows")

"""Page furniture shared by every dashboard page: engine, cached queries, filters, banner.

Why here: the sidebar filters and the freshness banner are drawn once by the entry point
(``dashboard/app.py``) before the page runs, so every page sees the same ``View`` (time
window, deployments, time zone) from ``st.session_state``. Queries go through one
``st.cache_data`` wrapper keyed on the store URL, the query name and its arguments, with a TTL
of one metrics collection cycle; a preset window ends at the next whole minute, so the key
changes at most once a minute.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import queries as q
from dashboard.readonly import readonly_engine
from models.db import DatabaseUnavailable, check_connection
from models.settings import ConfigError, Settings, load_settings

#: Cache lifetime: the default metrics collection interval (new data can appear that often).
TTL_S = 60
PRESETS = {"1 h": timedelta(hours=1), "24 h": timedelta(days=1), "7 d": timedelta(days=7)}
PRESETS["30 d"] = timedelta(days=30)
CUSTOM = "Custom"
_VIEW = "_fw_view"
_SETTINGS = "_fw_settings"


@dataclass(frozen=True)
class View:
    """What the sidebar selected: shared by every page of one script run."""

    url: str
    window: q.Window
    ids: tuple[int, ...]
    all_ids: tuple[int, ...]
    step: int
    tz: str
    preset: str
    now: datetime
    intervals: dict[str, int] = field(default_factory=dict)

    @property
    def filtered(self) -> bool:
        return len(self.ids) != len(self.all_ids)


@st.cache_resource(show_spinner=False)
def engine(url: str):
    """One read-only engine per store URL for the whole server process."""
    return readonly_engine(url)


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=512)
def query(url: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Run ``dashboard.queries.<name>(conn, *args, **kwargs)`` on a read-only connection."""
    with engine(url).connect() as conn:
        return getattr(q, name)(conn, *args, **kwargs)


def settings_or_stop() -> Settings:
    try:
        settings = load_settings()
        check_connection(engine(settings.database_url))
    except (ConfigError, DatabaseUnavailable) as exc:
        st.error(str(exc))
        st.stop()
    return settings


def step_for(span: timedelta) -> int:
    """Chart resolution: 1 min up to 2 h, 5 min up to a day, hourly up to a week, then daily.

    Each resolution reads the rollup of its own grain: a 30-day chart reads day rows, not
    the 720 hourly rows per deployment and status code that hourly bars would need.
    """
    if span <= timedelta(hours=2):
        return 60
    if span <= timedelta(hours=26):
        return 300
    if span <= timedelta(days=8):
        return 3600
    return 86400


def step_text(step: int) -> str:
    if step >= 86400:
        return "1 day (UTC)"
    return f"{step // 60} min" if step < 3600 else "1 h"


def _window(preset: str, now: datetime, tz: str) -> q.Window:
    end = q.coarse.ceil_to(now + timedelta(seconds=1), q.MINUTE)
    if preset in PRESETS:
        start = end - PRESETS[preset]
        if PRESETS[preset] > timedelta(days=8):  # whole UTC days: day rollups, daily bars
            start = q.coarse.floor_to(start, q.coarse.DAY)
        elif PRESETS[preset] >= timedelta(days=7):  # whole hours: hour rollups, hourly bars
            start = q.coarse.floor_to(start, q.coarse.HOUR)
        return q.Window(start, end, open_end=True)
    zone = zoneinfo.ZoneInfo(tz)
    today = now.astimezone(zone).date()
    chosen = st.session_state.get("fw_custom") or (today - timedelta(days=7), today)
    first, last = (chosen[0], chosen[-1]) if len(chosen) else (today, today)
    start = datetime.combine(first, time(), zone).astimezone(UTC)
    stop = datetime.combine(last + timedelta(days=1), time(), zone).astimezone(UTC)
    return q.Window(start, min(stop, end), open_end=stop >= end)


def sidebar(settings: Settings) -> View:
    """Draw the shared filters; store and return the ``View`` every page reads."""
    url = settings.database_url
    cat = query(url, "catalogue")
    now = datetime.now(UTC)
    sb = st.sidebar
    sb.header("Filters")
    browser_tz = st.context.timezone or "UTC"
    zones = ["UTC", *sorted(zoneinfo.available_timezones() - {"UTC"})]
    tz = sb.selectbox(
        "Time zone",
        zones,
        index=zones.index(browser_tz) if browser_tz in zones else 0,
        key="fw_tz",
        help="Times are shown in this zone (default: your browser's). Days of spend are UTC.",
    )
    preset = sb.radio("Time range", [*PRESETS, CUSTOM], index=1, horizontal=True, key="fw_range")
    if preset == CUSTOM:
        today = now.astimezone(zoneinfo.ZoneInfo(tz)).date()
        sb.date_input(
            "From / to",
            value=(today - timedelta(days=7), today),
            max_value=today,
            key="fw_custom",
        )
    window = _window(preset, now, tz)
    subs = resources = deps = models = []
    if not cat.empty:
        subs = sb.multiselect(
            "Subscription", sorted(cat["subscription_id"].unique()), key="fw_subs"
        )
        rcat = cat[cat["subscription_id"].isin(subs)] if subs else cat
        res_names = dict(zip(rcat["resource_id"], rcat["resource"], strict=False))
        resources = sb.multiselect(
            "Resource", list(res_names), format_func=res_names.get, key="fw_res"
        )
        models = sb.multiselect("Model", sorted(cat["model"].unique()), key="fw_models")
        dcat = cat[
            cat["deployment_id"].isin(q.select_deployments(cat, subs, resources, (), models))
        ]
        labels = dict(zip(dcat["deployment_id"], dcat["label"], strict=False))
        deps = sb.multiselect("Deployment", list(labels), format_func=labels.get, key="fw_deps")
    ids = q.select_deployments(cat, subs, resources, deps, models)
    sb.caption(f"{len(ids)} of {len(cat)} deployment(s) selected")
    view = View(
        url=url,
        window=window,
        ids=tuple(ids),
        all_ids=tuple(int(i) for i in cat["deployment_id"]) if not cat.empty else (),
        step=step_for(window.span),
        tz=tz,
        preset=preset,
        now=now,
        intervals={
            "discovery": settings.discovery_interval_s,
            "metrics": settings.metrics_interval_s,
            "logs": settings.logs_interval_s,
            "costs": settings.costs_interval_s,
        },
    )
    st.session_state[_VIEW] = view
    st.session_state[_SETTINGS] = settings
    return view


def current() -> View:
    """The ``View`` the entry point stored for this run."""
    return st.session_state[_VIEW]


def settings() -> Settings:
    """The settings the entry point loaded for this run (the live request lookup needs them
    for Log Analytics, the alert pages for the configured rules)."""
    found = st.session_state.get(_SETTINGS)
    return found if found is not None else load_settings()


def catalogue(view: View) -> pd.DataFrame:
    return query(view.url, "catalogue")


def ago(seconds: float | None) -> str:
    if seconds is None or pd.isna(seconds):
        return "never"
    s = int(seconds)
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{s // 60} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def freshness_banner(view: View) -> None:
    """Warn on every page when a source is stale, explain when nothing was collected yet."""
    fresh = query(view.url, "freshness", _minute(view.now), view.intervals)
    if fresh.empty:
        return
    if (fresh["state"] == "never").all():
        st.info(
            "Nothing collected yet: no collector run is recorded in this store. Start the "
            "collector with `foundry-watch collect` (or `make demo` for the emulator), then "
            "come back; pages fill in as sources report."
        )
        return
    lines = []
    for row in fresh.itertuples():
        if row.state == "stale":
            parts = [
                f"{x['scope']}: "
                + (x["error"] or f"last good run {ago(x['age_s'])} ago, last run {x['status']}")
                for x in row.stale_scopes[:3]
            ]
            more = f" (+{len(row.stale_scopes) - 3} more)" if len(row.stale_scopes) > 3 else ""
            lines.append(
                f"**{row.source}** has no good run within {ago(row.stale_after_s)} for "
                + "; ".join(parts)
                + more
            )
        elif row.state == "never":
            lines.append(f"**{row.source}** has never run")
    if lines:
        st.warning(
            "Data may be out of date: " + " · ".join(lines) + ". See *Collector health*.",
            icon=":material/warning:",
        )


def _minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def local(frame: pd.DataFrame, tz: str, *columns: str) -> pd.DataFrame:
    """Convert UTC timestamp columns to the chosen zone for display."""
    out = frame.copy()
    for col in columns:
        if col in out.columns and not out.empty:
            out[col] = pd.to_datetime(out[col], utc=True).dt.tz_convert(tz)
    return out


def window_caption(view: View) -> None:
    zone = zoneinfo.ZoneInfo(view.tz)
    fmt = "%Y-%m-%d %H:%M"
    start = view.window.start.astimezone(zone).strftime(fmt)
    end = view.window.end.astimezone(zone).strftime(fmt)
    scope = f"{len(view.ids)} deployment(s)" + (" (filtered)" if view.filtered else "")
    st.caption(f"{start} → {end} ({view.tz}) · {scope} · refreshed every {TTL_S} s")


def no_deployments(view: View) -> bool:
    """Explain (and tell the page to stop) when there is nothing to show."""
    if not view.all_ids:
        st.info(
            "No Claude deployments in the store yet. The collector's discovery job finds "
            "Foundry resources and their Anthropic deployments in the configured "
            "subscriptions (`FOUNDRY_WATCH_SUBSCRIPTIONS`); run `foundry-watch collect` or "
            "`foundry-watch doctor` to see what it can reach."
        )
        return True
    if not view.ids:
        st.info("No deployment matches the sidebar filters. Clear a filter to see data.")
        return True
    return False


def download(frame: pd.DataFrame, name: str, label: str = "Download CSV") -> None:
    st.download_button(
        label,
        frame.to_csv(index=False).encode(),
        file_name=f"{name}.csv",
        mime="text/csv",
        key=f"dl_{name}",
    )


def pct(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.2f} %"


def ms(value: Any) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.0f} ms"


def count(value: Any) -> str:
    if value is None or pd.isna(value):
        return "–"
    v = float(value)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.2f} {unit}"
    return f"{v:.0f}"


def money(value: Any, currency: str = "USD") -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value:,.2f} {currency}"


def delta(current: float | None, previous: float | None, unit: str = "") -> str | None:
    """A KPI delta string, or None when there is nothing to compare with."""
    if current is None or previous is None or pd.isna(current) or pd.isna(previous):
        return None
    if unit == "pp":
        return f"{current - previous:+.2f} pp"
    if previous == 0:
        return None
    return f"{100 * (current - previous) / previous:+.1f} %"


def time_config(*columns: str, fmt: str = "YYYY-MM-DD HH:mm") -> dict[str, Any]:
    """Column config showing timestamps compactly (in the zone ``local`` converted them to)."""
    return {c: st.column_config.DatetimeColumn(c.replace("_", " "), format=fmt) for c in columns}

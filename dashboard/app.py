"""Streamlit entry point (``foundry-watch dashboard``): reads the store, not Azure.

The one exception is user-triggered: the Request lookup page's live Log Analytics search.

Draws what every page shares (sign-in gate, sidebar filters, freshness banner), then runs the
selected page from ``dashboard/views/``. Settings come from the same sources as the CLI (which
passes its database URL down in the environment of the Streamlit process).
"""

from __future__ import annotations

import streamlit as st

from dashboard import auth, ui

st.set_page_config(page_title="foundry-watch", page_icon=":material/monitoring:", layout="wide")

if auth.gate():
    settings = ui.settings_or_stop()
    pages = st.navigation(
        [
            st.Page(
                "views/overview.py", title="Overview", icon=":material/monitor_heart:", default=True
            ),
            st.Page("views/deployment.py", title="Deployment", icon=":material/query_stats:"),
            st.Page("views/errors.py", title="Errors & throttling", icon=":material/error:"),
            st.Page("views/spend.py", title="Spend", icon=":material/payments:"),
            st.Page("views/lookup.py", title="Request lookup", icon=":material/search:"),
            st.Page("views/health.py", title="Collector health", icon=":material/build:"),
        ]
    )
    view = ui.sidebar(settings)
    ui.freshness_banner(view)
    pages.run()

"""Streamlit entry point (``foundry-watch dashboard``): reads only the store, never Azure.

This first page is Collector health; the other pages of the dashboard issue plug in beside it.
Settings come from the same sources as the CLI (the CLI passes its config file and database URL
down through the environment of the Streamlit process).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from collector.status import read_status
from models.db import DatabaseUnavailable, make_engine
from models.settings import ConfigError, load_settings


@st.cache_resource
def _engine(url: str):
    return make_engine(url)


def main() -> None:
    st.set_page_config(page_title="foundry-watch", layout="wide")
    st.title("foundry-watch: collector health")
    try:
        settings = load_settings()
        report = read_status(_engine(settings.database_url))
    except (ConfigError, DatabaseUnavailable) as exc:
        st.error(str(exc))
        return
    st.caption(f"Store: {report.database} · schema {report.schema_revision or '(none)'}")
    if not report.schema_current:
        st.warning(
            f"Schema is not current (code needs {report.schema_head}): "
            "run `foundry-watch db upgrade`."
        )
    counts = pd.DataFrame(
        {"table": list(report.row_counts), "rows": list(report.row_counts.values())}
    )
    st.subheader("Rows in the store")
    st.dataframe(counts, hide_index=True)
    st.subheader("Last run per source and scope")
    if report.last_runs:
        st.dataframe(pd.DataFrame(report.last_runs), hide_index=True)
    else:
        st.info("No collector runs yet. Start one with `foundry-watch collect` or `make demo`.")


main()

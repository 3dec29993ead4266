"""attune's dashboard: the router. ``attune dashboard`` runs ``streamlit run`` on this file.

The pages live in ``app_pages/`` (not ``pages/``: Streamlit would also serve a folder of that
name as pages of its own, outside this router); each reads its data through
:mod:`dashboards.sources`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run dashboards/app.py` puts dashboards/ on the path, not the repository root that
# holds the `dashboards`, `models` and `spark` packages (`attune dashboard` sets PYTHONPATH).
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

PAGES = Path(__file__).resolve().parent / "app_pages"

st.set_page_config(page_title="attune", page_icon=":material/insights:", layout="wide")

page = st.navigation(
    {
        "Experiments": [
            st.Page(
                PAGES / "experiments.py",
                title="Experiments",
                icon=":material/science:",
                default=True,
            ),
            st.Page(
                PAGES / "experiment.py",
                title="Experiment",
                icon=":material/query_stats:",
                url_path="experiment",
            ),
        ],
        "Platform": [
            st.Page(PAGES / "models.py", title="Models", icon=":material/model_training:"),
            st.Page(PAGES / "live.py", title="Live", icon=":material/monitor_heart:"),
            st.Page(PAGES / "bandits.py", title="Bandits", icon=":material/casino:"),
            st.Page(PAGES / "quality.py", title="Data quality", icon=":material/fact_check:"),
        ],
    }
)
page.run()

"""Models: what the model server serves, every published version with its offline metrics, and
the promotion gate's decisions."""

from __future__ import annotations

import streamlit as st

from dashboards import data, sources, ui

st.title("Models")
cfg = sources.config()
versions = sources.model_versions()
if isinstance(versions, data.Missing):
    ui.empty(versions)
    st.stop()

names = tuple(sorted({v.model for v in versions}))
st.subheader("Served now")
server = sources.served(names)
cols = st.columns(max(len(names), 1))
for col, name in zip(cols, names, strict=False):
    promoted = next((v.version for v in versions if v.model == name and v.served), None)
    with col, st.container(border=True):
        st.markdown(f"**{name}**")
        st.metric(
            "promoted version (serving.json)",
            f"v{promoted}" if promoted is not None else "latest",
        )
        if server["error"] is None:
            states = server["models"].get(name) or []
            available = [v for v, s in states if s == "AVAILABLE"]
            text = ", ".join(f"v{v} {s.lower()}" for v, s in states) or "no version loaded"
            if available:
                st.success(f"model server: serving v{', v'.join(available)}")
            else:
                st.warning(f"model server: {text}")
if server["error"] is not None:
    ui.not_running(
        "model server",
        server["url"],
        "attune serve models",
        detail=f"server not reachable: {server['error']}",
    )

st.subheader("Versions")
st.caption(
    "Offline metrics of each version on its holdout (recorded by its evaluation, "
    f"cut-off k = {cfg.models.k}); the promotion gate compares `{cfg.models.promotion_metric}`."
)
ui.table(
    data.model_version_rows(versions),
    row_style=lambda r: ui.GREEN if r["served"] else None,
    # short headers keep the table as wide as the page; the help says what each measures
    column_config={
        "created": st.column_config.TextColumn("created", help="the day it was trained (UTC)"),
        "rows / users": st.column_config.TextColumn(
            "rows / users", help="training examples and users in the gold data it was trained on"
        ),
        "baseline": st.column_config.TextColumn(
            "baseline", help="the best baseline on the same holdout, with its metric value"
        ),
        "hit_rate": st.column_config.TextColumn(
            "hits", help="HitRate@k: share of users with a relevant item in their top k"
        ),
        "coverage": st.column_config.TextColumn(
            "coverage", help="share of the catalog in at least one user's top k"
        ),
        "personalization": st.column_config.TextColumn(
            "personal.",
            help="personalization: 1 - the mean overlap |A ∩ B| / k of two users' top-k lists",
        ),
        "novelty": st.column_config.TextColumn(
            "novelty", help="mean self-information -log2(share of users) of recommended items, bits"
        ),
    },
    key="versions",
)

st.subheader("Promotions")
decisions = sources.promotions()
if decisions:
    ui.table(
        decisions,
        cell_styles={
            "promoted": lambda r: ui.GREEN_TEXT if r["promoted"] == "promoted" else ui.RED_TEXT
        },
        key="promotions",
    )
else:
    st.info(
        "**No promotion decision recorded yet** "
        f"({sources.repository()}/promotions.jsonl)\n\n"
        "The retraining's gate records one per candidate: `attune models retrain`, or trigger "
        "`attune_retrain` in Airflow (`attune airflow trigger attune_retrain`).",
        icon=":material/hourglass_empty:",
    )

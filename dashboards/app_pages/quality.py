"""Data quality: the nightly batch's checks (``quality/report``) and the drift between the speed
layer's features in Redis and the batch recomputation (``quality/drift``)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import data, sources, ui

st.title("Data quality")

# Checks ---------------------------------------------------------------------------------------
st.subheader("Checks of the nightly batch")
report = sources.quality_table("quality_report")
if isinstance(report, data.Missing):
    ui.empty(report)
else:
    dates = data.quality_dates(report, "run_date")
    run_date = st.columns([1, 3])[0].selectbox(
        "Run date", dates, format_func=lambda d: d.isoformat(), key="run"
    )
    rows = data.quality_rows(report, run_date)
    failed = sum(not r["passed"] for r in rows)
    c = st.columns(3)
    c[0].metric("Checks", len(rows))
    c[1].metric("Failed", failed)
    c[2].metric("Runs recorded", len(dates))
    if failed:
        st.error(
            f"{failed} check(s) failed on {run_date}: the batch stopped at the first failing "
            "stage. The detail column says what was measured.",
            icon=":material/error:",
        )
    else:
        st.success(f"Every check passed on {run_date}.", icon=":material/check_circle:")
    order = ("stage", "check", "result", "value", "threshold", "table", "detail", "passed")
    rows = [
        {k: {**r, "result": "passed" if r["passed"] else "FAILED"}[k] for k in order} for r in rows
    ]
    ui.table(
        rows,
        hide=("passed",),
        row_style=lambda r: None if r["passed"] else ui.RED,
        column_config={"detail": st.column_config.TextColumn("detail", width="large")},
        key="checks",
    )
    history = data.quality_history(report)
    if len(history) > 1:
        st.markdown("**Checks per run**")
        long = pd.DataFrame(history).melt("run_date", var_name="result", value_name="checks")
        chart = (
            alt.Chart(long)
            .mark_bar(size=26)
            .encode(
                x=alt.X("run_date:N", title="run date", axis=alt.Axis(labelAngle=0)),
                y=alt.Y("checks:Q", title="checks"),
                color=alt.Color(
                    "result:N",
                    scale=alt.Scale(domain=["passed", "failed"], range=["#16a34a", "#dc2626"]),
                ),
            )
            .properties(height=200)
        )
        st.altair_chart(chart, width="stretch")

# Drift ----------------------------------------------------------------------------------------
st.subheader("Stream vs batch drift")
st.caption(
    "A sample of users' features in Redis (the speed layer) compared with the nightly batch's "
    "recomputation from all history: the share equal should be 100%."
)
drift = sources.quality_table("quality_drift")
if isinstance(drift, data.Missing):
    ui.empty(drift)
else:
    as_of_dates = data.quality_dates(drift, "as_of_date")
    as_of = st.columns([1, 3])[0].selectbox(
        "As of", as_of_dates, format_func=lambda d: d.isoformat(), key="drift_as_of"
    )
    statuses, features = data.drift_rows(drift, as_of)
    left, right = st.columns([1, 3])
    with left:
        st.markdown("**Sampled users**")
        ui.table(statuses, key="drift_status")
    with right:
        st.markdown("**Features**")
        ui.table(
            features,
            row_style=lambda r: (
                ui.RED if r["share equal"] is not None and r["share equal"] < 0.99 else None
            ),
            column_config={
                "share equal": st.column_config.ProgressColumn(
                    "share equal", min_value=0.0, max_value=1.0, format="percent", color="green"
                )
            },
            key="drift_features",
        )

"""Experiments: every experiment of the report with its status, verdict, days, users and the
primary metric's lift."""

from __future__ import annotations

import streamlit as st

from dashboards import data, sources, ui

st.title("Experiments")
sources.report_picker()
report = sources.report(sources.selected_report_date())
if isinstance(report, data.Missing):
    ui.empty(report)
    st.stop()

st.caption(
    f"Report of {report.get('report_date', '?')}, generated {report.get('generated_at', '?')} "
    f"· {report.get('path', '')}"
)
experiments = report.get("experiments") or []
if not experiments:
    ui.empty(
        data.Missing(
            "the report lists no experiment",
            "declare one in the experiments file and start it with `attune experiments start ID`",
        )
    )
    st.stop()

summaries = [data.summarise(e) for e in experiments]
counts = {v: sum(s.verdict == v for s in summaries) for v in data.VERDICT_COLOURS}
cols = st.columns(4)
cols[0].metric("Experiments", len(summaries))
cols[1].metric("Ship", counts["ship"])
cols[2].metric("Stop", counts["stop"])
cols[3].metric("Keep running", counts["running"])

for s in summaries:
    with st.container(border=True):
        head, facts, action = st.columns([5, 4, 1.3], vertical_alignment="center")
        with head:
            st.markdown(f"#### {s.id}")
            st.caption(s.hypothesis or "(no hypothesis)")
            ui.experiment_badges(s)
            if s.srm_flagged or s.guardrails_breached:
                with st.container(horizontal=True, gap="small"):
                    if s.srm_flagged:
                        ui.badge("sample ratio mismatch", "orange", icon=":material/warning:")
                    if s.guardrails_breached:
                        ui.badge(
                            f"{s.guardrails_breached} guardrail(s) breached",
                            "red",
                            icon=":material/block:",
                        )
        with facts:
            a, b = st.columns(2)
            a.metric("Days", s.days if s.days is not None else "–")
            b.metric("Users", f"{s.users:,}")
            label = "Preference" if s.type == "interleaving" else f"Lift ({s.primary_metric})"
            st.markdown(f"**{label}:** {s.lift}")
        with action:
            st.page_link(
                "app_pages/experiment.py",
                label="Open",
                icon=":material/arrow_forward:",
                query_params={"experiment": s.id},
            )
        if s.reason:
            st.caption(f"Verdict: {s.reason}")

"""One experiment: warnings first (sample ratio mismatch, breached guardrails), then the verdict,
the metric table, the relative lift's confidence sequence over time, guardrails, segments, the
split, the interleaving result and today's partial counts.

The operational guardrails (API latency p99, error rate) are not in the report's numbers: they
are read live from the API's /metrics (the Live page's cached scrape), per variant since the API
started."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import data, sources, ui

sources.report_picker()
report = sources.report(sources.selected_report_date())
if isinstance(report, data.Missing):
    st.title("Experiment")
    ui.empty(report)
    st.stop()

ids = [str(e.get("id")) for e in report.get("experiments") or []]
if not ids:
    st.title("Experiment")
    ui.empty(
        data.Missing("the report lists no experiment", "start one: `attune experiments start ID`")
    )
    st.stop()

wanted = st.query_params.get("experiment")
index = ids.index(wanted) if wanted in ids else 0
chosen = st.sidebar.selectbox("Experiment", ids, index=index)
if chosen != wanted:
    st.query_params["experiment"] = chosen
exp: dict[str, Any] = data.find_experiment(report, chosen) or {}
summary = data.summarise(exp)

st.title(f"Experiment {summary.id}")
st.caption(summary.hypothesis or "(no hypothesis)")
ui.experiment_badges(summary, str(report.get("report_date", "?")))

# Warnings above the numbers: a broken split or a breached guardrail overrides any lift.
srm = data.srm_message(exp)
if srm:
    st.warning(srm, icon=":material/warning:")
for note in exp.get("warnings") or []:  # how the numbers were obtained (e.g. a bandit split)
    st.warning(str(note), icon=":material/warning:")
breached = data.breached_guardrails(exp)
if breached:
    st.error("Guardrail breached: " + "; ".join(breached), icon=":material/block:")
# the operational guardrails come from the API (the Live page's cached scrape), not the report
api = sources.api_scrape() if data.measures_live(exp.get("guardrails") or []) else None
operational = data.live_guardrails(exp, api)
live_breach = data.live_breach_message(operational, summary.verdict)
if live_breach:
    st.error(live_breach, icon=":material/block:")

verdict_text = f"**Verdict: {data.verdict_badge(summary.verdict)[0]}** — {summary.reason or ''}"
{"ship": st.success, "stop": st.error}.get(summary.verdict, st.info)(verdict_text)
if exp.get("error"):
    st.error(
        f"The analysis of this experiment failed: {exp['error']}. The nightly report's log "
        "says more; the other experiments are not affected.",
        icon=":material/error:",
    )
for note in exp.get("notes") or []:
    st.caption(f"Note: {note}")

cols = st.columns(4)
cols[0].metric("Days", summary.days if summary.days is not None else "–")
cols[1].metric("Users", f"{summary.users:,}")
planned = exp.get("planned_users_per_arm")
arms = [v for v in exp.get("variants") or [] if v.get("users") is not None]
smallest = min((int(v["users"]) for v in arms), default=None)
if planned and smallest is not None:
    cols[2].metric(
        "Planned users per arm",
        f"{int(planned):,}",
        delta=f"{100 * smallest / int(planned):.0f}% reached",
        delta_color="off",
    )
else:
    cols[2].metric("Planned users per arm", f"{int(planned):,}" if planned else "–")
cols[3].metric(summary.headline_label, summary.headline, help=summary.lift)

il = exp.get("interleaving")
if isinstance(il, dict):
    # the interleaving test is this type's result: it comes before everything else
    st.subheader("Interleaving")
    c = st.columns(4)
    c[0].metric("Impressions", data.fmt_count(il.get("impressions")))
    c[1].metric("Users", data.fmt_count(il.get("users")))
    c[2].metric("95% interval", data.fmt_interval(il.get("ci"), data.fmt_share))
    c[3].metric("p-value", data.fmt_p(il.get("p_value")))
    st.markdown(
        f"95% interval of the preference: **{data.fmt_interval(il.get('ci'), data.fmt_share)}** "
        f"(50% = no preference). Team-draft interleaving: both rankers' items are merged into "
        "one list per request, and each click credits the team of the clicked item; an "
        "impression whose clicks credit both teams equally is a tie."
    )
    ui.table(data.interleaving_rows(il), key="interleaving")

# Metrics --------------------------------------------------------------------------------
if summary.type != "interleaving" or exp.get("metrics"):
    st.subheader("Metrics")
    rows = data.metric_rows(exp)
    if rows:

        def lift_colour(r: Any) -> str | None:
            if not r["significant"]:
                return None
            return ui.GREEN_TEXT if r["good"] else ui.RED_TEXT

        ui.table(
            rows,
            hide=(
                "significant",
                "good",
                "abs. lift",
                "abs. 95% CI",
                "always-valid CI (abs.)",
                "CUPED",
                "role",
            ),
            cell_styles={"rel. lift": lift_colour, "rel. 95% CI": lift_colour},
            key="metrics",
        )
        st.caption(
            "Relative lift of the variant over the control with its 95% interval; green or "
            "red: significant after the multiple-testing adjustment. The always-valid p and "
            "interval stay valid however often the results are looked at; the verdict uses them."
        )
        with st.expander("Absolute differences, always-valid intervals, CUPED"):
            ui.table(
                rows,
                hide=(
                    "significant",
                    "good",
                    "rel. lift",
                    "rel. 95% CI",
                    "chance to win",
                    "p",
                    "p (adjusted)",
                    "always-valid p",
                    "always-valid 95% CI",
                ),
                key="metrics_abs",
            )
    else:
        st.info("No metric has been analysed yet for this experiment.")

# Over time ------------------------------------------------------------------------------------
metrics_with_history = data.history_metrics(exp)
if metrics_with_history:
    preference = metrics_with_history == ["preference"]
    st.subheader("Preference over time" if preference else "Relative lift over time")
    metric = st.columns([1, 3])[0].selectbox("Metric", metrics_with_history, key="history_metric")
    hist = pd.DataFrame(data.history_rows(exp, metric))
    hist["date"] = pd.to_datetime(hist["date"])
    # a preference is a share (no preference: 50%), a lift a signed change (no effect: 0)
    baseline, fmt = (0.5, "%") if metric == "preference" else (0.0, "+%")
    label = "preference for " + data.preference_of(il) if isinstance(il, dict) else metric
    y_title = label if metric == "preference" else f"relative lift of {metric}"
    (y_low, y_high), cut = data.history_domain(
        data.history_rows(exp, metric), baseline, share=metric == "preference"
    )
    y_scale = alt.Scale(domain=[y_low, y_high], nice=False)
    base = alt.Chart(hist).encode(
        x=alt.X("date:T", title="report date", axis=alt.Axis(format="%b %d", tickCount="day"))
    )
    several = hist["variant"].nunique() > 1
    colour = alt.Color("variant:N", title="variant", legend=alt.Legend() if several else None)
    # clip: an interval wider than the range (data.history_domain) is cut at the chart's edge
    band = base.mark_area(opacity=0.22, clip=True).encode(
        y=alt.Y("low:Q", title=y_title, axis=alt.Axis(format=fmt), scale=y_scale),
        y2="high:Q",
        color=colour,
        tooltip=[
            alt.Tooltip("date:T"),
            alt.Tooltip("variant:N"),
            alt.Tooltip("estimate:Q", format=f"{fmt[:-1]}.2%", title="estimate"),
            alt.Tooltip("low:Q", format=f"{fmt[:-1]}.2%", title="lower"),
            alt.Tooltip("high:Q", format=f"{fmt[:-1]}.2%", title="upper"),
            alt.Tooltip("users:Q", format=",", title="users"),
        ],
    )
    line = base.mark_line(point=True, strokeWidth=2.5, clip=True).encode(
        y=alt.Y("estimate:Q", scale=y_scale), color=colour
    )
    # each day's interval as a bar too: an area needs two days, the first day has one
    bars = base.mark_rule(strokeWidth=2, opacity=0.6, clip=True).encode(
        y=alt.Y("low:Q", scale=y_scale), y2="high:Q", color=colour
    )
    rule = (
        alt.Chart(pd.DataFrame({"y": [baseline]}))
        .mark_rule(color="#444", strokeDash=[5, 4])
        .encode(y="y:Q")
    )
    st.altair_chart((band + bars + line + rule).properties(height=340), width="stretch")
    cut_note = (
        " Intervals still this wide reach past the chart and are cut at its edge (hover a band "
        "for its full range)."
        if cut
        else ""
    )
    if metric == "preference":
        st.caption(
            "Line: the share of decided impressions won by the ranker, on each report date. "
            "Band: its 95% interval; 50% (dashed) is no preference." + cut_note
        )
    else:
        st.caption(
            "Line: the relative lift on each report date. Band: its always-valid 95% interval "
            "(a confidence sequence), safe to read every day; the lift is established once the "
            "band leaves zero (dashed)." + cut_note
        )

# Guardrails ----------------------------------------------------------------------------------
st.subheader("Guardrails")
guardrails = data.guardrail_rows(exp, operational)
if guardrails:
    ui.table(
        guardrails,
        hide=("breached",),
        row_style=lambda r: ui.RED if r["breached"] else None,
        column_config={"measured": st.column_config.TextColumn("measured", width="large")},
        key="guardrails",
    )
else:
    st.caption("No guardrail declared for this experiment.")
if report.get("operational_guardrails") and summary.type != "interleaving":
    st.caption(f"API latency p99 and error rate: {report['operational_guardrails']}.")
if operational.measured and operational.up:
    counts = ", ".join(f"{v} {data.fmt_count(n)}" for v, n in operational.requests.items())
    st.caption(
        f"Live guardrails, {operational.scraped_at}: the 99th percentile of "
        f"`{data.VARIANT_SECONDS}` (linear inside the bucket, as Prometheus' "
        "histogram_quantile) and failed requests over all of them, per variant since the API "
        f"started, not for the report's date; requests so far: {counts}."
    )
elif operational.measured and api is not None:
    address = api.url.removesuffix("/metrics")
    st.caption(
        f"The live guardrails need the API, which does not answer at {address} "
        f"({data.short_error(api.error)}): start it with `{data.API_START}`."
    )

# Segments ------------------------------------------------------------------------------------
st.subheader("Segments")
segments = data.segment_rows(exp)
if segments:
    ui.table(segments, key="segments")
    st.caption("Segments are for exploring, not for deciding: no multiple-testing adjustment.")
else:
    st.caption("No segment breakdown in this report.")

# Split ---------------------------------------------------------------------------------------
st.subheader("Variants")
variants = data.variant_rows(exp)
if variants:
    ui.table(variants, key="variants")
srm_test = exp.get("srm")
if isinstance(srm_test, dict):
    st.caption(
        f"Sample ratio test: chi² {srm_test.get('chi2', float('nan')):.2f}, "
        f"p {data.fmt_p(srm_test.get('p'))} (flagged below 0.001)."
    )

# Today so far --------------------------------------------------------------------------------
st.subheader("Today so far")
live_state = sources.redis_state()
live = (live_state.get("live") or {}).get(summary.id) if not live_state.get("error") else None
as_of, today = data.today_rows(exp.get("today"), live)
if today:
    st.caption(f"Partial counts as of {as_of}; the nightly report replaces them.")
    ui.table(today, key="today")
else:
    st.caption(
        "No counts for today yet: the speed layer (`attune speed start`) counts impressions "
        "and clicks per variant as they arrive."
    )

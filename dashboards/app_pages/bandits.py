"""Bandits: for every configured bandit policy (:func:`attune.bandits.registry.bandit_policies`),
how it has shared out its impressions hour by hour and what it believes of each arm's click rate:
the posterior mean with its 95% credible interval and the probability that the arm is the best.

The counts are the speed layer's, in Redis (``Keys.bandit`` and ``Keys.bandit_history``, read in
one round trip by :func:`dashboards.sources.bandit_state`); the estimates are
:func:`dashboards.data.bandit_arm_estimates` under the policy's configured Beta prior."""

from __future__ import annotations

from datetime import UTC, datetime

import altair as alt
import pandas as pd
import streamlit as st

from attune.bandits.registry import configured_policies, experiment_policies
from attune.config import ConfigError
from dashboards import data, sources, ui

title, refresh = st.columns([4, 1], vertical_alignment="bottom")
title.title("Bandits")
if refresh.button("Refresh", icon=":material/refresh:", key="bandits_refresh"):
    sources.clear()

cfg = sources.config()
policies = configured_policies(cfg)
try:
    policies |= experiment_policies(cfg)
except ConfigError as exc:  # the slots and messages still show
    st.warning(f"Experiment bandits are not shown: {exc}", icon=":material/warning:")
if not policies:
    ui.empty(
        data.Missing(
            "no bandit configured",
            "set `api.bandits.<slot>` in your config file (the one `attune --config FILE` "
            "reads; e.g. `home_banner: {policy: thompson}`, the slot one of "
            "`api.content_slots`: config/attune.example.yaml shows every key), or "
            "`api.message_bandit` for the messages, or `allocation: {bandit: ...}` on an A/B "
            "experiment in the experiments file; then restart the API (`attune serve api`), "
            "the speed layer (`attune speed start`) and this dashboard; docs/bandits.md",
        )
    )
    st.stop()

state = sources.bandit_state(tuple(policies))
st.caption(
    f"As of {datetime.now(UTC).isoformat(timespec='seconds')}; reads are reused for "
    f"{cfg.dashboard.cache_ttl_s:g} s (Refresh reads again). Counts: the speed layer's, in "
    "Redis; estimates under each policy's Beta prior."
)
if state["error"]:
    ui.not_running(
        "Redis",
        f"{cfg.redis.host}:{cfg.redis.port}/{cfg.redis.db}",
        "attune stack up",
        data.short_error(state["error"]),
    )
    st.stop()

for number, (policy, bandit) in enumerate(policies.items()):
    got = state["policies"].get(policy) or {}
    counts = got.get("counts") or {}
    history = got.get("history") or {}
    with st.container(border=True):
        st.subheader(policy, anchor=False)
        with st.container(horizontal=True, gap="small"):
            ui.badge(bandit.policy, "violet", icon=":material/casino:")
            ui.badge(f"ε {bandit.epsilon:g}", "gray")
            if bandit.policy == "thompson":
                ui.badge(f"prior Beta({bandit.prior_alpha:g}, {bandit.prior_beta:g})", "gray")
            else:
                ui.badge(f"α {bandit.ucb_alpha:g}, ridge {bandit.ridge:g}", "gray")
        if got.get("error"):
            st.error(
                f"The bandit state of {policy} cannot be read ({got['error']}): reset it "
                "(`attune.bandits.store.BanditStore.reset`) if it was written by hand.",
                icon=":material/error:",
            )
        totals = data.bandit_totals(counts)
        allocation = data.bandit_allocation(history)
        if not totals["impressions"] and not allocation:
            st.info(
                "**No impressions counted yet**\n\n"
                "The speed layer (`attune speed start`) counts impressions whose "
                f"`context.placement` is `{policy}`, and their clicks; the API logs them for "
                "each decision it makes with this policy.",
                icon=":material/hourglass_empty:",
            )
            continue

        estimates = data.bandit_arm_estimates(counts, bandit.prior_alpha, bandit.prior_beta)
        leader = max(estimates, key=lambda e: e.p_best, default=None)
        cols = st.columns(4)
        cols[0].metric("Impressions", data.fmt_count(totals["impressions"]))
        cols[1].metric("Clicks", data.fmt_count(totals["clicks"]))
        cols[2].metric(
            "Click rate", data.fmt_rate(totals["rate"]), help="Clicks / impressions, all arms."
        )
        cols[3].metric(
            "Most likely best",
            leader.arm if leader else "–",
            delta=f"P(best) {data.fmt_share(leader.p_best)}" if leader else None,
            delta_color="off",
            delta_arrow="off",
        )

        arms = sorted({e.arm for e in estimates} | {r["arm"] for r in allocation})
        # one colour per arm in both charts (the same domain), from a palette of distinct hues
        scale = alt.Scale(domain=arms, scheme="tableau10")
        colour = alt.Color("arm:N", title="arm", scale=scale)
        left, right = st.columns([3, 2])
        with left:
            st.markdown("**Allocation over time**")
            if allocation:
                frame = pd.DataFrame(allocation)
                chart = (
                    alt.Chart(frame)
                    .mark_area(opacity=0.85)
                    .encode(
                        x=alt.X(
                            "hour:T",
                            title="hour (UTC)",
                            scale=alt.Scale(type="utc"),
                            axis=alt.Axis(format="%b %d %H:00", labelAngle=0, tickCount=8),
                        ),
                        y=alt.Y(
                            "share:Q",
                            stack="zero",
                            title="share of the hour's impressions",
                            axis=alt.Axis(format="%"),
                            scale=alt.Scale(domain=[0, 1]),
                        ),
                        color=colour,
                        order=alt.Order("arm:N"),
                        tooltip=[
                            alt.Tooltip(
                                "utcyearmonthdatehours(hour):T",
                                title="hour (UTC)",
                                format="%Y-%m-%d %H:00",
                            ),
                            alt.Tooltip("arm:N"),
                            alt.Tooltip("share:Q", format=".1%"),
                            alt.Tooltip("impressions:Q", format=","),
                            alt.Tooltip("clicks:Q", format=","),
                        ],
                    )
                    .properties(height=300)
                )
                st.altair_chart(chart, width="stretch")
                st.caption(
                    "Each hour's impressions shared out among the arms (an hour without any "
                    "drops to zero)."
                )
            else:
                st.caption("No hourly history yet: the speed layer writes it as it counts.")
        with right:
            st.markdown("**Click rate per arm**")
            if estimates:
                rates = pd.DataFrame([e.__dict__ for e in estimates])
                base = alt.Chart(rates).encode(
                    y=alt.Y("arm:N", title=None, sort=arms),
                    color=alt.Color("arm:N", scale=scale, legend=None),
                )
                axis = alt.Axis(format="%")
                x_title = "click rate (95% credible interval)"
                interval = base.mark_rule(strokeWidth=3).encode(
                    x=alt.X("low:Q", title=x_title, axis=axis), x2="high:Q"
                )
                ends = [
                    base.mark_tick(thickness=2, size=14).encode(
                        x=alt.X(f"{end}:Q", title=x_title, axis=axis)
                    )
                    for end in ("low", "high")
                ]
                points = base.mark_point(filled=True, size=110, opacity=1).encode(
                    x=alt.X("rate:Q", title=x_title, axis=axis),
                    tooltip=[
                        alt.Tooltip("arm:N"),
                        alt.Tooltip("rate:Q", format=".2%", title="click rate"),
                        alt.Tooltip("low:Q", format=".2%", title="lower"),
                        alt.Tooltip("high:Q", format=".2%", title="upper"),
                        alt.Tooltip("p_best:Q", format=".1%", title="P(best)"),
                    ],
                )
                chart = alt.layer(interval, *ends, points).properties(
                    height=max(120, 60 * len(arms))
                )
                st.altair_chart(chart, width="stretch")
                st.caption(
                    "Posterior mean of each arm's click rate and its 95% equal-tailed credible "
                    "interval, from its counts and the prior."
                )
            else:
                st.caption("No cumulative counts in the bandit state yet (only hourly history).")
        if not estimates:
            continue
        ui.table(
            data.bandit_arm_rows(estimates),
            hide=("leading",),
            row_style=lambda r: ui.GREEN_TEXT if r["leading"] else None,
            key=f"bandit_arms_{number}",
        )
        notes = (
            "P(best): the posterior probability that the arm has the highest click rate, which "
            "is how often Thompson sampling shows it before the exploration floor "
            f"(every arm at least ε / arms = {bandit.epsilon:g} / {len(estimates)})."
        )
        if bandit.policy == "linucb":
            notes += (
                " LinUCB decides per segment from its linear model: these rates pool every "
                "segment, so they describe the arms, not the policy's choices."
            )
        st.caption(notes)

"""Live: events per second, freshness, the API's p99 and today's click rate, from the
collector's and the API's ``/metrics``, the speed layer's status board and Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import streamlit as st

from attune.supervisor import local_url
from dashboards import data, sources, ui

title, refresh = st.columns([4, 1], vertical_alignment="bottom")
title.title("Live")
if refresh.button("Refresh", icon=":material/refresh:"):
    sources.clear()

cfg = sources.config()
now = datetime.now(UTC)
collector_url = local_url(cfg.collector.host, cfg.collector.port)
api_url = local_url(cfg.api.host, cfg.api.port)
collector = sources.collector_scrape()
api = sources.api_scrape()
speed = sources.speed_status()
redis_state = sources.redis_state()
models = (cfg.api.model_server.retrieval_model, cfg.api.model_server.ranking_model)
model_server = sources.served(models)

rates = data.collector_rates(collector)
latency = data.api_latency(api)
fresh = data.speed_layer_freshness(speed["board"] if speed["running"] else None)
live = redis_state.get("live") or {}
click_rate = data.click_rate_today(live)

st.caption(
    f"As of {now.isoformat(timespec='seconds')}; reads are reused for "
    f"{cfg.dashboard.cache_ttl_s:g} s (Refresh reads again). Rates over "
    f"{cfg.dashboard.rate_window_s:g} s between two scrapes of /metrics."
)


def headline(col: Any, label: str, value: str | None, up: bool, help: str) -> None:
    """One of the four numbers; a service that is down says so under a dash."""
    if up:
        col.metric(label, value or "–", help=help)
    else:
        col.metric(label, "–", delta="not running", delta_color="red", delta_arrow="off", help=help)


cols = st.columns(4)
headline(
    cols[0],
    "Events / s (collector)",
    f"{rates['events_per_s']:,.1f}" if rates["events_per_s"] is not None else None,
    collector.up,
    "Events the collector accepted per second over the scrape window.",
)
headline(
    cols[1],
    "Freshness (online batch)",
    data.fmt_duration(fresh["batch_s"]) if fresh["batch_s"] is not None else None,
    speed["running"],
    "The speed layer's last online micro-batch: an event reaches Redis within about two "
    "batches of arriving in Kafka. The per-event p95 is measured by benchmarks/freshness.py.",
)
headline(
    cols[2],
    "API p99",
    data.fmt_duration(latency["p"]) if latency["p"] is not None else "no requests yet",
    api.up,
    f"99th percentile of the API's request latency ({latency['window'] or 'not running'}).",
)
headline(
    cols[3],
    "Click rate today",
    data.fmt_share(click_rate) if click_rate is not None else None,
    not redis_state.get("error"),
    "Clicks / impressions today over every experiment's variants (the speed layer's live "
    "counts in Redis).",
)

st.subheader("Services")


def service(
    name: str, address: str, up: bool, detail: str, start: str, error: str | None
) -> dict[str, str]:
    return {
        "service": name,
        "address": address,
        "state": "running" if up else "not running",
        "detail": detail if up else f"{data.short_error(error)} — start: {start}",
        "start": start,
    }


rows = [
    service(
        "collector",
        collector_url,
        collector.up,
        f"{data.fmt_count(rates['accepted_total'])} events accepted, "
        f"{data.fmt_count(rates['rejected_total'])} rejected since it started",
        "attune serve collector",
        collector.error,
    ),
    service(
        "personalization API",
        api_url,
        api.up,
        f"{data.fmt_count(latency['requests_total'])} requests since it started, "
        f"{latency['requests_per_s'] or 0:,.1f}/s now",
        "attune serve api",
        api.error,
    ),
    service(
        "model server",
        model_server["url"],
        model_server["error"] is None,
        "; ".join(
            f"{m} " + (", ".join(f"v{v} {s.lower()}" for v, s in states) or "none loaded")
            for m, states in model_server["models"].items()
        ),
        "attune serve models",
        model_server["error"],
    ),
    service(
        "speed layer",
        f"trigger {fresh['trigger'] or cfg.speed.trigger}",
        speed["running"],
        f"last online batch {data.fmt_duration(fresh['batch_s'])} at {fresh['batch_at']}",
        "attune speed start",
        "not running",
    ),
    service(
        "Redis",
        f"{cfg.redis.host}:{cfg.redis.port}/{cfg.redis.db}",
        not redis_state.get("error"),
        "online store reachable",
        "attune stack up",
        redis_state.get("error"),
    ),
]
down = [r for r in rows if r["state"] != "running"]
if down:
    st.warning(
        "**Not running:** "
        + "; ".join(f"{r['service']} — start it with `{r['start']}`" for r in down),
        icon=":material/power_off:",
    )
ui.table(
    rows,
    hide=("start",),
    cell_styles={"state": lambda r: ui.GREEN_TEXT if r["state"] == "running" else ui.RED_TEXT},
    column_config={"detail": st.column_config.TextColumn("detail", width="large")},
    key="services",
)

st.subheader("Experiments today")
if redis_state.get("error"):
    ui.not_running(
        "Redis", rows[-1]["address"], "attune stack up", data.short_error(redis_state["error"])
    )
elif live:
    table = [
        {"experiment": exp, **row}
        for exp, variants in sorted(live.items())
        for row in data.today_rows(None, variants)[1]
    ]
    ui.table(table, key="live_counts")
else:
    why = redis_state.get("live_error")
    st.info(
        "**No live experiment counts for today yet**\n\n"
        "The speed layer (`attune speed start`) counts impressions, clicks and purchases per "
        "experiment and variant as events arrive." + (f"\n\n({why})" if why else ""),
        icon=":material/hourglass_empty:",
    )

st.subheader("Online store")
if redis_state.get("error"):
    st.caption("Needs Redis, which is not running (see above).")
else:
    meta = redis_state.get("meta") or {}
    views = redis_state.get("views") or {}
    newest = data.ms_to_iso(meta.get("max_t"))
    age = data.age_s(meta.get("max_t"), now)
    if age is not None and age < 0:  # an event stamped ahead of this clock (a client's skew)
        when = f"{data.fmt_duration(-age)} ahead of this clock: a client's clock is fast"
    else:
        when = f"{data.fmt_duration(age)} ago"
    bench = sources.freshness_benchmark()
    facts = [
        {
            "what": "newest event applied",
            "value": f"{newest} ({when})"
            if newest
            else "none yet — start the speed layer: attune speed start",
        },
        {
            "what": "batch views written",
            "value": views.get("as_of") or "not yet — the nightly batch writes them",
        },
        {
            "what": "freshness p95 (benchmark)",
            "value": f"{bench['p95_s']:.2f} s, measured {bench['when']}"
            if bench
            else "not measured — run benchmarks/freshness.py",
        },
    ]
    ui.table(facts, key="online_store")

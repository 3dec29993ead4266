"""Where the pages get their data: the loaders of :mod:`dashboards.data`, cached.

Every read goes through ``st.cache_data`` with ``dashboard.cache_ttl_s`` of the configuration
(the configuration is only known at run time, so each loader is wrapped once, on first use,
with the configured ttl); connections (Redis) are ``st.cache_resource``. A page never reads a
file or a socket itself, and a source that is not there comes back as :class:`data.Missing`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from attune.config import AttuneConfig, ConfigError, load_config
from dashboards import data
from dashboards.delta import UnsupportedTable, read_delta

F = TypeVar("F", bound=Callable[..., Any])

_CACHED: dict[tuple[str, float], Any] = {}


@st.cache_resource(show_spinner=False)
def _config() -> AttuneConfig:
    return load_config(None)


def config() -> AttuneConfig:
    """The configuration (``$ATTUNE_CONFIG``, set by ``attune dashboard``); a broken one is
    shown as an error and the page stops there."""
    try:
        return _config()
    except ConfigError as exc:
        st.error(f"The configuration cannot be loaded:\n\n```\n{exc}\n```")
        st.stop()
        raise  # unreachable: st.stop() ends the script run


def _cached(fn: F) -> F:
    """``fn`` under ``st.cache_data`` with the configured ttl (wrapped once per ttl)."""
    ttl = config().dashboard.cache_ttl_s
    key = (f"{fn.__module__}.{fn.__qualname__}", ttl)
    if key not in _CACHED:
        _CACHED[key] = st.cache_data(ttl=ttl, show_spinner=False)(fn)
    wrapped: F = _CACHED[key]
    return wrapped


def clear() -> None:
    """Forget every cached read (the pages' refresh buttons)."""
    st.cache_data.clear()


# Experiments -------------------------------------------------------------------------------


def reports_dir(cfg: AttuneConfig) -> Path:
    """``experiments.reports_dir`` (under ``var_dir`` if relative): where the nightly experiment
    report writes ``latest.json`` and the dated files."""
    return cfg.paths.resolve(cfg.experiments.reports_dir)


def report(report_date: str | None = None) -> dict[str, Any] | data.Missing:
    folder = reports_dir(config())
    return _cached(data.load_report)(folder, report_date)


def report_dates() -> list[str]:
    return _cached(data.report_dates)(reports_dir(config()))


def selected_report_date() -> str | None:
    """The report date picked in the sidebar (None: the latest)."""
    value = st.session_state.get("report_date", "latest")
    return None if value in (None, "latest") else str(value)


def report_picker() -> None:
    """A sidebar select box over ``latest`` and the dated reports (shared by the pages)."""
    options = ["latest", *report_dates()]
    if st.session_state.get("report_date") not in options:
        st.session_state["report_date"] = "latest"
    st.sidebar.selectbox("Report", options, key="report_date", help="the nightly report's date")


# Models ------------------------------------------------------------------------------------


def repository() -> Path:
    cfg = config()
    return cfg.paths.resolve(cfg.models.repository_dir)


def model_versions() -> list[data.ModelVersion] | data.Missing:
    return _cached(data.model_versions)(repository())


def promotions() -> list[dict[str, Any]]:
    return _cached(data.promotion_rows)(repository())


def model_server_url(cfg: AttuneConfig) -> str:
    ms = cfg.api.model_server
    from attune.supervisor import local_url

    return ms.rest_url or local_url(cfg.serving.host, cfg.serving.rest_port)


def served(models: tuple[str, ...]) -> dict[str, Any]:
    return _cached(data.served_versions)(model_server_url(config()), models, 1.0)


# Live ---------------------------------------------------------------------------------------


def _scrape(url: str, seconds: float) -> data.Scrape:
    from attune.secrets import ensure_admin_key

    # /metrics needs an admin key (collector/api.metrics_requires_admin): the dashboard keeps
    # its own, "dashboard", in a 0600 client file beside api.admin_keys_file
    key = ensure_admin_key(config(), "dashboard")
    return data.scrape_twice(url, seconds, headers={"X-Admin-Key": key})


def collector_scrape() -> data.Scrape:
    from attune.supervisor import local_url

    cfg = config()
    url = f"{local_url(cfg.collector.host, cfg.collector.port)}/metrics"
    return _cached(_scrape)(url, cfg.dashboard.rate_window_s)


def api_scrape() -> data.Scrape:
    from attune.supervisor import local_url

    cfg = config()
    url = f"{local_url(cfg.api.host, cfg.api.port)}/metrics"
    return _cached(_scrape)(url, cfg.dashboard.rate_window_s)


@st.cache_resource(show_spinner=False)
def _redis(host: str, port: int, db: int, cluster: bool = False) -> Any:
    from attune.config import RedisConfig
    from attune.redis_connect import connect

    r = RedisConfig(host=host, port=port, db=db, cluster=cluster)
    return connect(r, socket_timeout=1.0, socket_connect_timeout=1.0)


def _redis_state(
    host: str, port: int, db: int, prefix: str, day: str, cluster: bool = False
) -> dict[str, Any]:
    """Online-store bookkeeping and the live experiment counts of ``day`` (or ``error``)."""
    import redis

    from attune.keys import Keys

    client = _redis(host, port, db, cluster=cluster)
    keys = Keys(prefix)
    try:
        meta = {k.decode(): v.decode() for k, v in client.hgetall(keys.meta).items()}
        views = {k.decode(): v.decode() for k, v in client.hgetall(keys.views_meta).items()}
    except redis.RedisError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    live: Any = None
    live_error = None
    try:
        from attune.experiments.live import read_live_counts
    except ImportError:
        live_error = "attune.experiments.live is not installed"
    else:
        try:
            live = read_live_counts(client, keys, day)
        except Exception as exc:  # a reader bug must not take the page down
            live_error = f"{type(exc).__name__}: {exc}"
    return {
        "error": None,
        "meta": meta,
        "views": views,
        "live": data.normalise_live_counts(live),
        "live_error": live_error,
    }


def redis_state(day: str | None = None) -> dict[str, Any]:
    cfg = config()
    day = day or datetime.now(UTC).date().isoformat()
    return _cached(_redis_state)(
        cfg.redis.host,
        cfg.redis.port,
        cfg.redis.db,
        cfg.speed.online_store.key_prefix,
        day,
        cfg.redis.cluster,
    )


def _speed_board(status_file: Path) -> dict[str, Any] | None:
    import json

    try:
        board: dict[str, Any] = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return None
    return board


def speed_status() -> dict[str, Any]:
    """Whether the speed layer runs (its pid record, as `attune speed status` checks it) and
    its status board (``var/run/speed-status.json``)."""
    from speed_layer.control import running_pid
    from speed_layer.job import speed_paths

    cfg = config()
    return {
        "running": running_pid(cfg) is not None,
        "board": _cached(_speed_board)(speed_paths(cfg).status_file),
    }


# Bandits -----------------------------------------------------------------------------------


def _bandit_state(
    host: str, port: int, db: int, prefix: str, policies: tuple[str, ...], cluster: bool = False
) -> dict[str, Any]:
    """Every policy's counts and hourly history, read in one pipelined round trip:
    ``{"error": None, "policies": {policy: {"counts": {arm: ArmCounts}, "history": {(hour ms,
    arm): ArmCounts}, "error": None}}}`` (``error`` set when Redis does not answer, or per
    policy when its hashes cannot be decoded)."""
    import redis

    from attune.bandits.store import decode_counts, decode_history
    from attune.keys import Keys

    client = _redis(host, port, db, cluster=cluster)
    keys = Keys(prefix)
    pipe = client.pipeline(transaction=False)
    for policy in policies:
        pipe.hgetall(keys.bandit(policy))
        pipe.hgetall(keys.bandit_history(policy))
    try:
        replies = pipe.execute()
    except redis.RedisError as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "policies": {}}
    out: dict[str, Any] = {}
    for i, policy in enumerate(policies):
        try:
            out[policy] = {
                "counts": decode_counts(replies[2 * i]),
                "history": decode_history(replies[2 * i + 1]),
                "error": None,
            }
        except (ValueError, UnicodeDecodeError) as exc:  # a hand-edited or foreign hash
            out[policy] = {"counts": {}, "history": {}, "error": f"{type(exc).__name__}: {exc}"}
    return {"error": None, "policies": out}


def bandit_state(policies: tuple[str, ...]) -> dict[str, Any]:
    """:func:`_bandit_state` of the configured Redis and key prefix, cached."""
    cfg = config()
    return _cached(_bandit_state)(
        cfg.redis.host,
        cfg.redis.port,
        cfg.redis.db,
        cfg.speed.online_store.key_prefix,
        policies,
        cfg.redis.cluster,
    )


# Data quality ------------------------------------------------------------------------------


def _table(path: str) -> list[dict[str, Any]] | data.Missing:
    hint = f"no data yet — run the nightly batch (`{data.BATCH_COMMAND}`), which writes it"
    if "://" in path:
        return data.Missing(f"{path} is not a local folder", "the dashboard reads local lakes")
    try:
        rows = read_delta(path)
    except UnsupportedTable as exc:
        return data.Missing(str(exc), "read it with Spark (`attune batch run --json`)")
    except (OSError, ValueError, KeyError) as exc:
        return data.Missing(f"{path} cannot be read ({type(exc).__name__}: {exc})", hint)
    if rows is None:
        return data.Missing(f"no table at {path} yet", hint)
    if not rows:
        return data.Missing(f"the table {path} is empty", hint)
    return rows


def quality_table(name: str) -> list[dict[str, Any]] | data.Missing:
    """``quality_report`` or ``quality_drift`` (:class:`spark.tables.Lake` names them)."""
    from spark.tables import Lake

    path = getattr(Lake.from_config(config()), name)
    return _cached(_table)(path)


def freshness_benchmark() -> dict[str, Any] | None:
    """The last ``benchmarks/freshness.py`` result for the configured trigger, if any."""
    cfg = config()
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "freshness.json"
    return _cached(data.benchmarked_freshness)(path, cfg.speed.trigger)

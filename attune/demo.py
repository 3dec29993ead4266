"""``attune demo``: the platform end to end on the embedded defaults.

Stages, each timed (a summary table closes the run):

1. **stack** – ``attune stack up`` (Kafka, Redis, topics);
2. **replay** – the collector as a child process, MovieTweetings 100K replayed through it
   (catalog first), what landed shown (``attune events summary``);
3. **speed layer** – ``attune speed start`` (detached; left running if it already was), then
   waits until both queries have consumed the whole events topic (lag, rate and ETA printed):
   the users' features are in Redis;
4. **serve** – ``attune serve models`` and ``attune serve api`` as child processes, before any
   model exists (the API answers from its fallbacks; the server loads each model when it is
   published), so the retraining's smoke test goes through the real API;
5. **airflow** – ``attune airflow up``: a local Airflow 3 on ``dags/`` (its UI's URL and the path
   of the generated admin password file are printed);
6. **nightly + retrain (airflow)** – triggers ``attune_nightly`` for the last day of the
   replayed data (silver re-derived from its first day), follows it task by task, then follows
   the ``attune_retrain`` run that the gold Asset triggered: train, evaluate, gate, publish,
   await serving, smoke test, record. With ``--direct`` the same two jobs run in this process
   instead (``attune batch run`` + ``attune models retrain``), without Airflow;
7. **recommendations** – for the three users with the most ratings: their top 5 with reasons
   and the answering source, and how much their top 10 overlap (personalization, as
   ``attune models evaluate`` measures it); then a scripted click on the
   first user's top item is posted to the collector, the demo waits until the speed layer
   applied it, and shows the first user's recommendations again: the clicked item has left the
   list and the reasons follow it;
8. **experiment** – the A/B test ``demo_ranking`` of ``config/experiments-demo.yaml`` (ranking
   on against off) is started; 4,000 MovieTweetings users (``--experiment-users``) ask the
   real API twice each, and simulated users (``attune.demo_experiment``: genre tastes from
   their ratings, a position bias) click, dwell and dismiss through the collector; once the
   speed layer has landed it all, silver and gold are built for today and ``attune
   experiments report`` gives the verdict, which ``attune dashboard`` shows.

Re-running is idempotent: replayed event ids are deterministic, so before replaying the demo
reads the events topic and sends only the events whose ids are not there yet; the batch runs
only when the dataset's events in the topic are not those the last batch saw (recorded in
``var/run/demo.json``); the retraining only when the gold tables changed since the latest
published models. The scripted click is a new event each run (it is new behaviour of the user,
on whatever is their top item now).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path
from typing import Any

from attune.config import AttuneConfig, ConfigError

DATASET = "movietweetings"


def _say(message: str) -> None:
    print(f"demo: {message}", flush=True)


class _Stages:
    """Times the demo's stages and prints a summary at the end."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float, str]] = []

    def run(self, name: str, work: Any, *args: Any) -> Any:
        _say(f"== {name} ==")
        started = time.monotonic()
        result = work(*args)
        seconds = time.monotonic() - started
        note = result if isinstance(result, str) else ""
        self.times.append((name, seconds, note))
        _say(f"{name}: {seconds:.1f} s" + (f" ({note})" if note else ""))
        return result

    def summary(self) -> None:
        _say("stage timings:")
        for name, seconds, note in self.times:
            print(f"  {name:<16} {seconds:8.1f} s  {note}", flush=True)
        print(f"  {'total':<16} {sum(t for _, t, _ in self.times):8.1f} s", flush=True)


def cmd_demo(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    from attune.stack import stack_up

    stages = _Stages()
    limit = getattr(args, "limit", None)
    direct = bool(getattr(args, "direct", False))
    cfg = _with_demo_experiments(cfg)
    stages.run("stack", stack_up, cfg)
    landed, first_day, last_day = stages.run("replay", _replay, cfg, limit)
    started_speed = stages.run("speed layer", _speed_layer, cfg)
    try:
        servers = stages.run("serve", _start_servers, cfg)
        try:
            if direct:
                stages.run("batch", _batch, cfg, landed, first_day, last_day)
                stages.run("retrain", _retrain, cfg)
            else:
                stages.run("airflow", _airflow_up, cfg)
                stages.run(
                    "nightly + retrain (airflow)",
                    _orchestrated,
                    cfg,
                    landed,
                    first_day,
                    last_day,
                )
            stages.run("recommendations", _show_and_click, cfg, limit, servers[1].url)
            users = int(getattr(args, "experiment_users", 4000))
            if users > 0:
                stages.run("experiment", _experiment, cfg, limit, servers[1].url, users)
        finally:
            for child in reversed(servers):
                child.stop()
    finally:
        if started_speed:
            from speed_layer.control import stop_speed_layer

            _say("stopping the speed layer the demo started (`attune speed start` restarts it)")
            stop_speed_layer(cfg)
    stages.summary()
    if not direct:
        from attune.stack.airflow import ui_url

        _say(f"Airflow keeps running: its UI is {ui_url(cfg)} (`attune airflow down` stops it)")
    return 0


def _replay(cfg: AttuneConfig, limit: int | None) -> tuple[int, date, date]:
    """Replay what is not in the topic yet; returns (the dataset's events in the topic, its
    first day, its last day)."""
    from attune.collector.process import collector_process
    from attune.events_cli import print_summary, summarize_events, summarize_keyed
    from attune.replay import dataset_events, print_replay_summary, replay
    from attune.secrets import ensure_write_key

    start = time.monotonic()
    write_key = ensure_write_key(cfg, "demo")
    _, rows, events = dataset_events(cfg, DATASET, limit)
    wanted = {e["event_id"] for e in events}
    _say(f"checking which of the {len(wanted):,} {DATASET} events are already in Kafka")
    present: set[str] = set()
    summarize_events(
        cfg,
        progress=True,
        on_event=lambda e: present.add(e["event_id"]) if e.get("event_id") in wanted else None,
    )
    missing = len(wanted) - len(present)

    if missing == 0:
        _say(f"all {len(wanted):,} events of {DATASET} are already in the topic: not replaying")
    else:
        log_path = cfg.log_dir / "collector-demo.log"
        _say(f"starting the collector (log {log_path})")
        with collector_process(cfg, log_path=log_path) as url:
            _say(f"collector ready at {url}; replaying {missing:,} events")
            summary = replay(
                cfg, DATASET, url=url, write_key=write_key, limit=limit, skip_event_ids=present
            )
            print_replay_summary(summary)
        _say("collector stopped")
        if summary.failed or summary.rejected:
            raise ConfigError(
                f"the replay lost events: {summary.failed} failed, {summary.rejected} rejected; "
                f"see {log_path}"
            )

    _say("what landed:")
    landed: set[str] = set()
    summaries = {
        "events": summarize_events(
            cfg,
            progress=True,
            on_event=lambda e: landed.add(e["event_id"]) if e.get("event_id") in wanted else None,
        ),
        "catalog": summarize_keyed(cfg, "catalog"),
        "dead_letter": summarize_keyed(cfg, "dead_letter"),
    }
    print_summary(summaries)
    _say(
        f"{DATASET}: {rows:,} ratings -> {len(wanted):,} events ({rows:,} item_view + {rows:,} "
        f"rating); {len(landed):,} of them are in the topic; "
        f"done in {time.monotonic() - start:.0f} s"
    )
    if len(landed) != len(wanted):
        raise ConfigError(f"{len(wanted) - len(landed):,} events of {DATASET} did not land")
    days = sorted(e["timestamp"][:10] for e in events[:1] + events[-1:])
    return len(landed), date.fromisoformat(days[0]), date.fromisoformat(days[-1])


# ----------------------------------------------------------------------------------------
# Speed layer, batch, training


def _speed_layer(cfg: AttuneConfig) -> bool:
    """Start the speed layer unless it runs; wait until it consumed the whole topic. Returns
    whether the demo started it."""
    from speed_layer.control import cmd_start, running_pid, status_report

    already = running_pid(cfg) is not None
    if already:
        _say("the speed layer is already running")
    elif cmd_start(cfg, argparse.Namespace(queries="bronze,online", foreground=False)) != 0:
        raise ConfigError("the speed layer did not start; see `attune speed status` and its log")
    started = time.monotonic()
    first_lag: int | None = None
    last_print = 0.0
    while True:
        report = status_report(cfg)
        if not report["running"]:
            raise ConfigError(f"the speed layer stopped; see its log {report['log']}")
        lags = {q["name"]: q.get("total_lag") for q in report["queries"]}
        if lags and all(v == 0 for v in lags.values()) and len(lags) == 2:
            _say(f"the speed layer has consumed the whole events topic ({lags})")
            return not already
        known = [v for v in lags.values() if v is not None]
        lag = sum(known) if known else None  # both queries read the whole topic
        now = time.monotonic()
        if lag is not None and first_lag is None:
            first_lag = lag
        if now - last_print >= 5:
            last_print = now
            if lag is not None and first_lag is not None and first_lag > lag:
                rate = (first_lag - lag) / max(1e-9, now - started)
                eta = f", ETA {lag / rate:.0f} s" if rate > 0 else ""
                _say(f"speed layer lag {lags} ({rate:,.0f} records/s{eta})")
            else:
                _say(f"speed layer catching up: lag {lags}")
        time.sleep(2.0)


def _state_path(cfg: AttuneConfig) -> Any:
    return cfg.run_dir / "demo.json"


def _read_state(cfg: AttuneConfig) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads(_state_path(cfg).read_text())
        return loaded
    except (OSError, ValueError):
        return {}


def _batch_done(cfg: AttuneConfig, landed: int, last_day: date) -> bool:
    """Whether the last batch run covered exactly these replayed events (and its views are in
    Redis). Only the dataset's events count: the demo's own later events (the scripted click,
    the API's impressions) are from today, outside the replayed dates the batch is about."""
    from attune.online_store import OnlineStore
    from attune.redis_connect import connect

    done = _read_state(cfg).get("batch") or {}
    r = connect(cfg.redis)
    try:
        as_of = r.hget(OnlineStore.from_config(cfg).keys.views_meta, "as_of")
    finally:
        r.close()
    return (
        done.get("date") == last_day.isoformat()
        and done.get("dataset_events") == landed
        and as_of == last_day.isoformat().encode()
    )


def _batch_finished(cfg: AttuneConfig, landed: int, last_day: date) -> None:
    state = _read_state(cfg)
    state["batch"] = {"date": last_day.isoformat(), "dataset_events": landed}
    _state_path(cfg).parent.mkdir(parents=True, exist_ok=True)
    _state_path(cfg).write_text(json.dumps(state, indent=2) + "\n")


def _batch(cfg: AttuneConfig, landed: int, first_day: date, last_day: date) -> str:
    """Run the batch for ``last_day`` in this process unless the last run covered the same
    replayed events."""
    from spark.job import run_batch
    from spark.quality import DataQualityError

    if _batch_done(cfg, landed, last_day):
        return f"views for {last_day} already in Redis for these {landed:,} events: not re-run"
    _say(f"batch run for {last_day}, silver re-derived from {first_day}")
    try:
        report = run_batch(cfg, last_day, since=first_day, say=_say)
    except DataQualityError as exc:
        raise ConfigError(f"the batch stopped on a data-quality check: {exc}") from None
    _batch_finished(cfg, landed, last_day)
    return ", ".join(f"{s.stage} {s.seconds:.0f} s" for s in report.stages)


def _delta_version(path: str) -> int | None:
    """The latest version of a local Delta table (its newest commit file), without Spark."""

    log = Path(path) / "_delta_log"
    if not log.is_dir():
        return None
    versions = [int(p.stem) for p in log.glob("*.json") if p.stem.isdigit()]
    return max(versions) if versions else None


def _models_current(cfg: AttuneConfig) -> str | None:
    """Why retraining would be pointless (the latest published models were trained on the
    current gold tables and are served), or None when it is needed."""
    from models.train import RANKING_NAME, RETRIEVAL_NAME, repository

    lake = cfg.lake_root.rstrip("/")
    iv = _delta_version(f"{lake}/{cfg.models.training_examples_table}")
    tv = _delta_version(f"{lake}/{cfg.models.items_table}")
    if iv is None:
        raise ConfigError(f"no gold training examples in {lake}: the batch did not write them")
    label = f"delta:{iv}" + (f"+{tv}" if tv is not None else "")
    repo = repository(cfg)
    served = {n: repo.served_version(n) for n in (RETRIEVAL_NAME, RANKING_NAME)}
    latest = {n: max(repo.versions(n), default=None) for n in served}
    if any(v is None for v in served.values()) or not all(latest.values()):
        return None
    trained_on = {
        (repo.metadata(n, v).get("data") or {}).get("version")
        for n, v in latest.items()
        if v is not None
    }
    if trained_on == {label}:
        return f"latest models {latest} were trained on gold {label}: serving {served}"
    return None


def _retrain(cfg: AttuneConfig) -> str:
    """``attune models retrain`` (every step) in this process, unless the models are current."""
    from models.retrain import EXIT_NOTHING_PASSED, EXIT_OK, default_run_dir, run_steps

    current = _models_current(cfg)
    if current:
        return current
    run_dir = default_run_dir(cfg)
    _say(f"retraining (run folder {run_dir})")
    code, results = run_steps(cfg, run_dir, say=_say)
    if code not in (EXIT_OK, EXIT_NOTHING_PASSED):
        raise ConfigError(f"the retraining failed (exit {code}); see {run_dir}")
    return f"gate passed: {code == EXIT_OK}; published {results.get('publish')}"


def _start_servers(cfg: AttuneConfig) -> list[Any]:
    """The model server (whatever the repository holds, maybe nothing yet) and the API."""
    from attune.api.keys import ensure_read_key
    from attune.api.process import start_api
    from attune.serving.process import start_model_server

    ensure_read_key(cfg, "demo")
    ensure_read_key(cfg, cfg.models.retrain.smoke_read_key)
    _say(f"starting the model server (log {cfg.log_dir / 'models-demo.log'})")
    models = start_model_server(cfg, models=(), log_path=cfg.log_dir / "models-demo.log")
    try:
        _say(f"starting the personalization API (log {cfg.log_dir / 'api-demo.log'})")
        api = start_api(cfg, log_path=cfg.log_dir / "api-demo.log")
    except BaseException:
        models.stop()
        raise
    return [models, api]


# ----------------------------------------------------------------------------------------
# Through Airflow


def _airflow_up(cfg: AttuneConfig) -> str:
    from attune.stack.airflow import airflow_up

    return f"UI {airflow_up(cfg)}"


def _orchestrated(cfg: AttuneConfig, landed: int, first_day: date, last_day: date) -> str:
    """Trigger ``attune_nightly`` for ``last_day``, follow it, then follow the ``attune_retrain``
    run its gold Asset triggered; each task's state and time is printed as it changes."""
    from attune.stack.airflow_client import AirflowClient

    nightly, retrain = "attune_nightly", "attune_retrain"
    with AirflowClient.from_config(cfg) as client:
        client.wait_for_dags([nightly, retrain], say=_say)
        if _batch_done(cfg, landed, last_day):
            current = _models_current(cfg)
            if current:
                return f"batch for {last_day} done and {current}: nothing triggered"
            client.set_paused(retrain, False)
            run_id = client.trigger(retrain)
            _say(f"triggered {retrain} ({run_id}): the batch is done, the models are not")
            result = client.wait_run(retrain, run_id, RETRAIN_TIMEOUT_S, say=_say)
            return _summary([result])
        client.set_paused(retrain, False)  # the gold Asset schedules it
        for old in client.runs(nightly, limit=100):
            if old["logical_date"] and old["logical_date"].startswith(last_day.isoformat()):
                _say(f"removing the earlier {nightly} run for {last_day} ({old['dag_run_id']})")
                client.request("DELETE", f"/api/v2/dags/{nightly}/dagRuns/{old['dag_run_id']}")
        before = {r["dag_run_id"] for r in client.runs(retrain, limit=100)}
        run_id = client.trigger(nightly, last_day, {"since": first_day.isoformat()})
        _say(f"triggered {nightly} for {last_day} ({run_id}); silver from {first_day}")
        first = client.wait_run(nightly, run_id, NIGHTLY_TIMEOUT_S, say=_say, drop_scheduled=True)
        if first.state != "success":
            raise ConfigError(
                f"{nightly} {first.state}: see {client.base}/dags/{nightly} and "
                f"var/reports/airflow/failures.jsonl"
            )
        _batch_finished(cfg, landed, last_day)
        retrain_id = client.next_run(retrain, before, timeout_s=120)
        _say(f"{retrain} triggered by the gold training set ({retrain_id})")
        second = client.wait_run(retrain, retrain_id, RETRAIN_TIMEOUT_S, say=_say)
        return _summary([first, second])


NIGHTLY_TIMEOUT_S = 3600.0
RETRAIN_TIMEOUT_S = 3600.0


def _summary(results: list[Any]) -> str:
    """Each run's tasks with state and time; fails the demo when a run failed."""
    for result in results:
        _say(f"{result.dag_id} {result.state} in {result.seconds:.0f} s:")
        for t in sorted(result.tasks, key=lambda t: t.task_id):
            took = f"{t.seconds:7.1f} s" if t.seconds else "        "
            print(f"  {t.task_id:<16} {t.state or '-':<10} {took}", flush=True)
    failed = [r for r in results if r.state != "success"]
    if failed:
        raise ConfigError(
            f"{failed[0].dag_id} run {failed[0].run_id} {failed[0].state}; its task logs are in "
            "the Airflow UI, what failed and what to do in var/reports/airflow/failures.jsonl"
        )
    return ", ".join(f"{r.dag_id} {r.seconds:.0f} s" for r in results)


# ----------------------------------------------------------------------------------------
# Serving and the recommendations


def _demo_users(cfg: AttuneConfig, limit: int | None, n: int = 3) -> list[str]:
    """The ``n`` users with the most ratings in the replayed data (ties: smallest id)."""
    from collections import Counter

    from attune.replay import read_ratings, resolve_dataset

    rows = read_ratings(resolve_dataset(cfg, DATASET).events_file, limit)
    counts = Counter(user for _, user, _, _, _ in rows)
    return [u for u, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def _show(http: Any, url: str, key: str, user: str, k: int = 10, shown: int = 5) -> list[str]:
    """Ask the API for the user's top ``k``, print the first ``shown`` with their reasons and
    return all ``k`` ids."""
    r = http.post(
        f"{url}/v1/recommendations",
        json={"user_id": user, "k": k, "context": {"placement": "home", "device": "web"}},
        headers={"X-Read-Key": key},
    )
    if r.status_code != 200:
        raise ConfigError(f"the API answered {r.status_code}: {r.text[:300]}")
    body = r.json()
    timing = r.headers.get("server-timing", "")
    total = next((p.split("=")[1] for p in timing.split(", ") if p.startswith("total")), "?")
    print(
        f"  user {user}: source {body['source']}, variant {body['variant']}, "
        f"{total} ms" + (f", degraded: {body['degraded']}" if body.get("degraded") else ""),
        flush=True,
    )
    for item in body["items"][:shown]:
        cats = "|".join(item["categories"][:3])
        print(
            f"    {item['position'] + 1}. {item['title'] or item['item_id']} [{cats}] "
            f"- {item['reason']}",
            flush=True,
        )
    return [i["item_id"] for i in body["items"]]


def _overlap(tops: dict[str, list[str]], k: int = 10) -> str:
    """How much the users' top-``k`` lists overlap: shared items per pair, and personalization
    as ``attune models evaluate`` reports it (:func:`models.metrics.personalization`): 1 minus
    the mean of ``|A ∩ B| / k`` over the pairs."""
    from itertools import combinations

    pairs = list(combinations(tops, 2))
    if not pairs:
        return "one user: no overlap to measure"
    shares = []
    parts = []
    for a, b in pairs:
        common = set(tops[a][:k]) & set(tops[b][:k])
        shares.append(len(common) / k)
        parts.append(f"{a}/{b} {len(common)} shared")
    return f"{', '.join(parts)}; personalization {1 - sum(shares) / len(shares):.2f}"


def _show_and_click(cfg: AttuneConfig, limit: int | None, api_url: str) -> str:
    import uuid
    from datetime import UTC, datetime

    import httpx

    from attune.api.keys import ensure_read_key
    from attune.collector.process import collector_process
    from attune.online_store import OnlineStore, wait_for_item
    from attune.secrets import Pseudonymizer, ensure_write_key, pseudonym_key

    read_key = ensure_read_key(cfg, "demo")
    write_key = ensure_write_key(cfg, "demo")
    users = _demo_users(cfg, limit)
    with httpx.Client(timeout=30) as http:
        _say(f"recommendations for the {len(users)} users with the most ratings:")
        tops = {u: _show(http, api_url, read_key, u) for u in users}
        _say(f"overlap of their top 10: {_overlap(tops)}")
        user = users[0]
        clicked = tops[user][0]
        log_path = cfg.log_dir / "collector-demo.log"
        with collector_process(cfg, log_path=log_path) as curl:
            event = {
                "event_id": uuid.uuid4().hex,
                "type": "click",
                "user_id": user,
                "timestamp": datetime.now(UTC).isoformat(),
                "items": [{"item_id": clicked}],
                "context": {"placement": "home", "device": "web"},
            }
            r = http.post(f"{curl}/v1/events", json=event, headers={"X-Write-Key": write_key})
            if r.status_code != 200:
                raise ConfigError(f"the collector answered {r.status_code}: {r.text}")
            acked = time.monotonic()
            _say(f"scripted click: user {user} clicked {clicked} (collector: {r.json()})")
            pseudonym = Pseudonymizer(pseudonym_key(cfg))(user)
            store = OnlineStore.from_config(cfg)
            if not wait_for_item(_redis(cfg), pseudonym, clicked, store, timeout_s=60):
                raise ConfigError("the click did not reach Redis within 60 s")
            reached = time.monotonic() - acked
        _say(f"the click reached Redis {reached:.2f} s after the collector's ack; now:")
        after = _show(http, api_url, read_key, user)
    gone = clicked not in after
    new = [i for i in after[:5] if i not in tops[user][:5]]
    _say(
        f"after the click: {clicked} {'left' if gone else 'is still in'} the list; "
        f"{len(new)} new item(s) in the top 5"
    )
    return f"click reached Redis in {reached:.2f} s; list changed: {gone or bool(new)}"


# ----------------------------------------------------------------------------------------
# The experiment


def _with_demo_experiments(cfg: AttuneConfig) -> AttuneConfig:
    """The demo's config reads its experiment from ``config/experiments-demo.yaml``."""
    from attune.demo_experiment import DEMO_EXPERIMENTS

    path = (Path(__file__).resolve().parent.parent / DEMO_EXPERIMENTS).resolve()
    _say(f"experiments declared in {path} (demo_ranking: ranking on against off)")
    return cfg.model_copy(update={"experiments": cfg.experiments.model_copy(update={"file": path})})


def _experiment(cfg: AttuneConfig, limit: int | None, api_url: str, users: int) -> str:
    from attune.demo_experiment import run_demo_experiment

    return run_demo_experiment(
        cfg,
        api_url,
        limit=limit,
        wait_for_topic=lambda: _speed_layer(cfg),
        say=_say,
        users_n=users,
    )


def _redis(cfg: AttuneConfig) -> Any:
    from attune.redis_connect import connect

    return connect(cfg.redis)

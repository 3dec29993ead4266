"""The ``attune`` command line: one thin entry point per process.

Every command loads the configuration once and hands it to a library function; heavy modules
(Spark, TensorFlow) are imported only by the commands that need them, so ``attune --help`` and
``attune stack status`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from attune.config import ConfigError, load_config
from attune.supervisor import ProcessError


def _handler(target: str) -> Callable[[Any, argparse.Namespace], int | None]:
    """``"module:function"`` -> a handler that imports the module only when it runs."""
    module_name, func_name = target.split(":")

    def run(cfg: Any, args: argparse.Namespace) -> int | None:
        func = getattr(importlib.import_module(module_name), func_name)
        return func(cfg, args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attune",
        description="attune: real-time personalization on Kafka, Spark + Delta, Redis and TFRS.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (default: $ATTUNE_CONFIG, else the embedded defaults)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the libraries' own output on the console too (Spark's JVM, which otherwise "
        "writes to var/log/spark-<app>.log); same as ATTUNE_VERBOSE=1",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # attune stack up|down|status
    stack = sub.add_parser("stack", help="start, stop or inspect the local stack (Kafka, Redis)")
    stack_sub = stack.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = stack_sub.add_parser("up", help="start Kafka (KRaft) and Redis, create the topics")
    up.add_argument(
        "--brokers",
        type=int,
        choices=range(1, 10),
        metavar="N",
        help="run a KRaft cluster of N combined broker + controller nodes (ports kafka.broker."
        "port + i * port_step); topics get replication min(3, N) and min.insync.replicas one "
        "fewer",
    )
    up.add_argument(
        "--redis-masters",
        type=int,
        choices=range(3, 10),
        metavar="N",
        help="also run a Redis Cluster of N masters (3-9) on redis.port + 1 .. + N, files in "
        "var/redis-cluster, and print the ATTUNE__REDIS__* settings that point attune at it",
    )
    up.set_defaults(handler=_handler("attune.stack.cli:cmd_up"))
    down = stack_sub.add_parser("down", help="stop what `stack up` started")
    down.set_defaults(handler=_handler("attune.stack.cli:cmd_down"))
    status = stack_sub.add_parser("status", help="health and address of every component")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_handler("attune.stack.cli:cmd_status"))
    topics = stack_sub.add_parser(
        "topics", help="create the declared topics on kafka.bootstrap_servers (any broker)"
    )
    topics.set_defaults(handler=_handler("attune.stack.cli:cmd_topics"))

    # attune doctor
    doctor = sub.add_parser(
        "doctor",
        help="is this machine ready: Python, Java, Maven, jars, package versions, free ports, "
        "disk, memory, each with its fix (exit 1: something to fix first)",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(handler=_handler("attune.doctor:cmd_doctor"))

    # attune store migrate-keys
    store = sub.add_parser("store", help="the Redis online store")
    store_sub = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate = store_sub.add_parser(
        "migrate-keys",
        help="move Redis keys of older versions to their current names (idempotent): "
        "consent:<subject> -> P:u:{<subject>}:consent; the aggregates P:popular, P:meta, "
        "P:trend*, P:i:{item}:stats, P:exp:live:* -> P:{agg}:...; P:exp:state/history -> "
        "P:{exp}:...",
    )
    migrate.set_defaults(handler=_handler("attune.ingest.consent:cmd_migrate_keys"))

    # attune serve collector | models
    serve = sub.add_parser("serve", help="run a server process")
    serve_sub = serve.add_subparsers(dest="server", required=True, metavar="SERVER")
    coll = serve_sub.add_parser("collector", help="the HTTP event collector (POST /v1/events)")
    coll.add_argument("--host", help="listen address (default: collector.host)")
    coll.add_argument("--port", type=int, help="listen port (default: collector.port)")
    coll.set_defaults(handler=_handler("attune.collector.app:cmd_serve"))
    srv = serve_sub.add_parser(
        "models", help="the model server: TF Serving's REST (:8501) and gRPC (:8500) APIs"
    )
    srv.add_argument(
        "--model-config-file",
        metavar="FILE",
        help="TF Serving model config (model_config_list); default: serving.model_config_file, "
        "else every model of the repository at its promoted or latest version",
    )
    srv.add_argument("--repository", metavar="DIR", help="default: models.repository_dir")
    srv.add_argument("--host", help="listen address (default: serving.host)")
    srv.add_argument("--rest-port", type=int, help="REST port (default: serving.rest_port)")
    srv.add_argument("--grpc-port", type=int, help="gRPC port (default: serving.grpc_port)")
    srv.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        help="merge concurrent requests into batches (default: serving.batching.enabled)",
    )
    srv.set_defaults(handler=_handler("attune.serving.server:cmd_serve"))
    papi = serve_sub.add_parser(
        "api", help="the personalization API (recommendations, content, messages, feedback)"
    )
    papi.add_argument("--host", help="listen address (default: api.host)")
    papi.add_argument("--port", type=int, help="listen port (default: api.port)")
    papi.add_argument(
        "--protocol",
        choices=["grpc", "rest"],
        help="TF Serving protocol to the model server (default: api.model_server.protocol)",
    )
    papi.set_defaults(handler=_handler("attune.api.app:cmd_serve"))

    # attune speed start|stop|status
    speed = sub.add_parser("speed", help="the speed layer: Kafka -> Redis features + Delta bronze")
    speed_sub = speed.add_subparsers(dest="action", required=True, metavar="ACTION")
    sp_start = speed_sub.add_parser("start", help="start the streaming queries (detached)")
    sp_start.add_argument(
        "--foreground", action="store_true", help="run in this process until Ctrl-C or SIGTERM"
    )
    sp_start.add_argument(
        "--queries",
        default="bronze,online",
        help="comma-separated queries to run: bronze, online (default: both)",
    )
    sp_start.set_defaults(handler=_handler("speed_layer.control:cmd_start"))
    sp_stop = speed_sub.add_parser("stop", help="stop the detached speed layer")
    sp_stop.add_argument("--timeout", type=float, default=60.0, help="seconds before SIGKILL")
    sp_stop.set_defaults(handler=_handler("speed_layer.control:cmd_stop"))
    sp_status = speed_sub.add_parser("status", help="queries, last progress, consumer lag")
    sp_status.add_argument("--json", action="store_true", help="machine-readable output")
    sp_status.set_defaults(handler=_handler("speed_layer.control:cmd_status"))
    sp_watch = speed_sub.add_parser(
        "watchdog",
        help="alive, keeping up, making progress? start it when it is not running "
        "(exit 0 healthy or restarted, 1 unhealthy; thresholds: speed.watchdog)",
    )
    sp_watch.add_argument("--json", action="store_true", help="machine-readable output")
    sp_watch.set_defaults(handler=_handler("speed_layer.watchdog:cmd_watchdog"))

    # attune keys create SOURCE
    keys = sub.add_parser("keys", help="manage write, read and admin keys")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    kc = keys_sub.add_parser("create", help="create (or rotate) the write key of a source")
    kc.add_argument("source", help="source name, e.g. web, ios, demo")
    kc.set_defaults(handler=_handler("attune.secrets:cmd_create_key"))
    kr = keys_sub.add_parser(
        "create-read", help="create (or rotate) a read key of the personalization API"
    )
    kr.add_argument("name", help="key name, e.g. web, ios (rate limits are per name)")
    kr.set_defaults(handler=_handler("attune.api.keys:cmd_create_read_key"))
    ka = keys_sub.add_parser(
        "create-admin",
        help="create (or rotate) an admin key: /metrics, /docs, /openapi.json of both services",
    )
    ka.add_argument("name", help="key name, e.g. prometheus, dashboard")
    ka.set_defaults(handler=_handler("attune.secrets:cmd_create_admin_key"))

    # attune events schema
    events = sub.add_parser("events", help="the event schema and what landed in Kafka")
    events_sub = events.add_subparsers(dest="action", required=True, metavar="ACTION")
    schema = events_sub.add_parser("schema", help="print the event schema")
    schema.add_argument("--format", choices=["json", "spark-ddl"], default="json")
    schema.set_defaults(handler=_handler("attune.events_cli:cmd_schema"))
    summary = events_sub.add_parser("summary", help="count what the events topic holds")
    summary.add_argument("--json", action="store_true", help="machine-readable output")
    summary.set_defaults(handler=_handler("attune.events_cli:cmd_summary"))

    # attune replay
    replay = sub.add_parser("replay", help="replay a real dataset as events through the collector")
    replay.add_argument(
        "--dataset",
        required=True,
        help="movietweetings, otto, or a PATH to a ratings file (MovieTweetings format)",
    )
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, metavar="N", help="events per second")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no pacing (default)")
    replay.add_argument("--limit", type=int, help="replay only the first N source rows")
    replay.add_argument("--collector-url", help="default: http://collector.host:collector.port")
    replay.add_argument(
        "--write-key", help="write key (default: $ATTUNE_WRITE_KEY, else the demo source's key)"
    )
    replay.add_argument("--batch-size", type=int, default=500, help="events per request")
    replay.set_defaults(handler=_handler("attune.replay:cmd_replay"))

    # attune models train|evaluate|list (options in models/cli.py, handlers imported lazily)
    from models.cli import add_models_parser

    add_models_parser(sub, _handler)

    # attune airflow up | down | status | trigger
    af = sub.add_parser("airflow", help="a local Airflow 3 running the project's DAGs (dags/)")
    af_sub = af.add_subparsers(dest="action", required=True, metavar="ACTION")
    af_up = af_sub.add_parser(
        "up", help="start the API server + UI, scheduler and DAG processor; print the UI's URL"
    )
    af_up.set_defaults(handler=_handler("attune.stack.cli:cmd_airflow_up"))
    af_down = af_sub.add_parser("down", help="stop what `airflow up` started")
    af_down.set_defaults(handler=_handler("attune.stack.cli:cmd_airflow_down"))
    af_status = af_sub.add_parser("status", help="health of each Airflow component")
    af_status.add_argument("--json", action="store_true", help="machine-readable output")
    af_status.set_defaults(handler=_handler("attune.stack.cli:cmd_airflow_status"))
    af_trig = af_sub.add_parser("trigger", help="unpause and trigger a DAG run")
    af_trig.add_argument("dag", metavar="DAG", help="the DAG id, e.g. attune_nightly")
    af_trig.add_argument("--date", help="logical date YYYY-MM-DD (default: now)")
    af_trig.add_argument("--conf", help="run parameters as a JSON object")
    af_trig.add_argument("--wait", action="store_true", help="follow the run until it ends")
    af_trig.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds --wait waits (default 3600)"
    )
    af_trig.set_defaults(handler=_handler("attune.stack.cli:cmd_airflow_trigger"))

    # attune demo
    demo = sub.add_parser("demo", help="end to end on the embedded defaults")
    demo.add_argument("--limit", type=int, help="replay only the first N ratings")
    demo.add_argument(
        "--direct",
        action="store_true",
        help="run the nightly batch and the retraining in this process instead of through "
        "Airflow (`attune airflow up`)",
    )
    demo.add_argument(
        "--experiment-users",
        type=int,
        default=4000,
        metavar="N",
        help="users of the closing A/B test's simulated traffic (0 skips the experiment)",
    )
    demo.set_defaults(handler=_handler("attune.demo:cmd_demo"))

    # attune dashboard [--host H] [--port P]
    dash = sub.add_parser(
        "dashboard",
        help="the Streamlit results dashboard (experiments, models, live, data quality); prints "
        "its URL and runs until Ctrl-C (exit 0; 1 if Streamlit dies, 2 if it cannot start)",
    )
    dash.add_argument("--host", help="listen address (default: dashboard.host)")
    dash.add_argument("--port", type=int, help="listen port (default: dashboard.port)")
    dash.set_defaults(handler=_handler("attune.dashboard:cmd_dashboard"))

    # attune batch run --date YYYY-MM-DD [--stage ...]
    batch = sub.add_parser("batch", help="the nightly batch layer: bronze -> silver -> gold")
    batch_sub = batch.add_subparsers(dest="action", required=True, metavar="ACTION")
    b_run = batch_sub.add_parser("run", help="process one logical date (idempotent)")
    b_run.add_argument("--date", required=True, help="logical date, YYYY-MM-DD (UTC)")
    b_run.add_argument(
        "--stage",
        action="append",
        choices=["quality", "silver", "gold", "views", "maintenance"],
        help="run only this stage (repeatable; default: all, in order)",
    )
    b_run.add_argument(
        "--from",
        dest="since",
        metavar="YYYY-MM-DD",
        help="re-derive silver from this event date (default: --date minus batch.late_days)",
    )
    b_run.add_argument("--json", action="store_true", help="print the run report as JSON")
    b_run.set_defaults(handler=_handler("spark.job:cmd_run"))

    # attune privacy erase --user ID | apply | vacuum | verify | export --user ID
    privacy = sub.add_parser("privacy", help="data-subject requests (right to erasure)")
    privacy_sub = privacy.add_subparsers(dest="action", required=True, metavar="ACTION")
    erase = privacy_sub.add_parser(
        "erase", help="erase a user: Redis now, every Delta table at the next batch run"
    )
    erase.add_argument("--user", action="append", metavar="ID", help="the app's user id")
    erase.add_argument(
        "--anonymous-id", action="append", metavar="ID", help="an anonymous (visitor) id"
    )
    erase.set_defaults(handler=_handler("spark.erasure:cmd_erase"))
    p_apply = privacy_sub.add_parser(
        "apply", help="apply pending erasure requests to every Delta table now (idempotent)"
    )
    p_apply.add_argument(
        "--date", metavar="YYYY-MM-DD", help="the 'as of' date (UTC; default: today)"
    )
    p_apply.add_argument("--json", action="store_true", help="print the result as JSON")
    p_apply.set_defaults(handler=_handler("spark.privacy:cmd_apply"))
    p_vacuum = privacy_sub.add_parser(
        "vacuum", help="VACUUM the tables whose erased rows' files are past the retention"
    )
    p_vacuum.add_argument("--json", action="store_true", help="print the result as JSON")
    p_vacuum.set_defaults(handler=_handler("spark.privacy:cmd_vacuum"))
    p_verify = privacy_sub.add_parser(
        "verify",
        help="count what applied erasures left in Delta and Redis, and list every store (Redis, "
        "Delta, models, Kafka, files) with its state and the time by which it is clean; report "
        "in var/reports/privacy/; exit 1 when something is left that should be gone by now",
    )
    p_verify.add_argument("--json", action="store_true", help="print the report as JSON")
    p_verify.set_defaults(handler=_handler("spark.privacy:cmd_verify"))
    p_export = privacy_sub.add_parser(
        "export",
        help="everything held about a user (Redis, Delta, experiments, models) as one JSON "
        "document, encrypted traits decrypted (default under var/reports/privacy/); exit 1 "
        "when a store cannot be read (the profile key missing included)",
    )
    p_export.add_argument(
        "--user", required=True, metavar="ID", help="the app's user id, as the user knows it"
    )
    p_export.add_argument("--out", metavar="PATH", help="where to write the document")
    p_export.set_defaults(handler=_handler("spark.privacy_export:cmd_export"))

    # attune experiments list | show ID | start ID [--force] | stop ID | report [--date D]
    experiments = sub.add_parser(
        "experiments",
        help="the experiments declared in experiments.file: their state (list, show), "
        "start and stop, and their results (report)",
    )
    exp_sub = experiments.add_subparsers(dest="action", required=True, metavar="ACTION")
    e_list = exp_sub.add_parser(
        "list",
        help="every declared experiment with its status (draft, scheduled, running, "
        "stopped) and allocation (exit 1: Redis not reachable)",
    )
    e_list.add_argument("--json", action="store_true", help="machine-readable output")
    e_list.set_defaults(handler=_handler("attune.experiments.cli:cmd_list"))
    e_show = exp_sub.add_parser(
        "show",
        help="one experiment: declaration, status, planned users per arm, allocation, history "
        "(exit 2: unknown id)",
    )
    e_show.add_argument("id", metavar="ID", help="the experiment id")
    e_show.add_argument("--json", action="store_true", help="machine-readable output")
    e_show.set_defaults(handler=_handler("attune.experiments.cli:cmd_show"))
    e_start = exp_sub.add_parser(
        "start",
        help="record an experiment as running with its declared allocation (exit 2: unknown "
        "id; 3: refused, e.g. it runs with another allocation than the file's)",
    )
    e_start.add_argument("id", metavar="ID", help="the experiment id")
    e_start.add_argument(
        "--force",
        action="store_true",
        help="re-record the allocation of a running experiment (or start a stopped one again); "
        "users between the old and new boundaries change arm",
    )
    e_start.set_defaults(handler=_handler("attune.experiments.cli:cmd_start"))
    e_stop = exp_sub.add_parser(
        "stop", help="record an experiment as stopped (exit 2: unknown id; 3: never started)"
    )
    e_stop.add_argument("id", metavar="ID", help="the experiment id")
    e_stop.set_defaults(handler=_handler("attune.experiments.cli:cmd_stop"))
    e_report = exp_sub.add_parser(
        "report",
        help="every experiment's metrics, intervals, guardrails and verdict from "
        "gold/experiment_users (table, verdicts first; JSON in experiments.reports_dir; "
        "gold/experiment_results); exit 1: gold not built for the date",
    )
    e_report.add_argument(
        "--date",
        metavar="YYYY-MM-DD",
        help="report date (default: the latest date the nightly batch has built)",
    )
    e_report.add_argument("--json", action="store_true", help="print the report as JSON")
    e_report.set_defaults(handler=_handler("spark.experiments:cmd_report"))

    # attune bandits evaluate --policy NAME|FILE --logs open-bandit|PATH
    bandits = sub.add_parser("bandits", help="bandit policies: off-policy evaluation")
    bandits_sub = bandits.add_subparsers(dest="action", required=True, metavar="ACTION")
    b_eval = bandits_sub.add_parser(
        "evaluate",
        help="estimate a slate policy's click rate from logged data with DM, IPW, SNIPW and DR "
        "(bootstrap intervals; table, JSON and PNG); exit 2: bad input",
        description="Off-policy evaluation (docs/bandits.md). Exit codes: 0 done; 2 bad input "
        "(unknown policy, missing file, wrong columns or shapes).",
    )
    b_eval.add_argument(
        "--policy",
        required=True,
        metavar="NAME|FILE",
        help="bts (the Open Bandit Dataset's Bernoulli Thompson sampling), random (uniform), "
        'or a JSON/CSV file of probabilities: JSON {"probabilities": [[p(item, position 1), '
        "...] per item]} (or one such table per round); CSV item_id,position,probability "
        "[,round]",
    )
    b_eval.add_argument(
        "--logs",
        required=True,
        metavar="open-bandit|PATH",
        help="open-bandit (the uniform-random logs under paths.data_dir), open-bandit-bts, or "
        "a folder with all.csv and item_context.csv in the Open Bandit layout",
    )
    b_eval.add_argument(
        "--out", metavar="DIR", help="where to write JSON and PNG (default: var/reports/bandits)"
    )
    b_eval.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the 95%% intervals, reward model refitted in each "
        "(default 1000; 0 = no intervals)",
    )
    b_eval.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (0)")
    b_eval.add_argument(
        "--n-sim",
        type=int,
        default=100_000,
        metavar="N",
        help="simulated slates for the bts policy's action distribution (default 100000)",
    )
    b_eval.add_argument(
        "--folds", type=int, default=3, metavar="K", help="cross-fitting folds (default 3)"
    )
    b_eval.add_argument(
        "--obp-runs",
        type=int,
        default=0,
        metavar="R",
        help="also report the mean relative error over R bootstrap samples of the logs "
        "(obp's benchmark protocol; needs a known truth)",
    )
    b_eval.add_argument("--json", action="store_true", help="print the report as JSON")
    b_eval.set_defaults(handler=_handler("attune.bandits.cli:cmd_evaluate"))

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ["ATTUNE_VERBOSE"] = "1"  # read where libraries start, also in children
    try:
        cfg = load_config(args.config)
        result = args.handler(cfg, args)
    except (ConfigError, ProcessError) as exc:  # a child that could not start says why
        print(f"attune: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attune: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

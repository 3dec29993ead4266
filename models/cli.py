"""The ``attune models`` command group: ``train``, ``retrain``, ``evaluate``,
``evaluate-sessions``, ``list`` and ``rollback``.

Only argparse lives here, so building the ``attune`` parser stays fast; the handlers are lazy
``"module:function"`` targets that import TensorFlow and Spark when they run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from attune.config import AttuneConfig

MODEL_CHOICES = (
    "popularity",
    "recent-popularity",
    "item-knn",
    "ease",
    "als",
    "tfrs-retrieval",
    "tfrs-retrieval+ranking",
)


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The data options shared by ``models train`` and ``models evaluate``."""
    parser.add_argument(
        "--interactions",
        required=required,
        metavar="FILE",
        help="interactions: a ratings file, a MovieTweetings folder, or a Delta table path",
    )
    parser.add_argument("--items", metavar="FILE", help="item metadata (title, genres, ...)")
    parser.add_argument(
        "--format",
        choices=["movietweetings", "csv", "delta"],
        default="movietweetings",
        help="input format (default: movietweetings)",
    )
    parser.add_argument(
        "--columns",
        metavar="MAP",
        help="CSV interaction columns, e.g. user=customer,item=sku,rating=stars,timestamp=ts "
        "(also event_type, device, placement, segment); unmapped ones are read under the "
        "contract names user_id, item_id, rating, timestamp, ...",
    )
    parser.add_argument(
        "--item-columns",
        metavar="MAP",
        help="CSV item columns, e.g. item=sku,title=name,genres=categories,year=year,price=price",
    )
    parser.add_argument("--sep", default=",", help="CSV field separator (default: ,)")
    parser.add_argument("--genre-sep", default="|", help="separator inside genres (default: |)")
    parser.add_argument("--limit", type=int, help="use only the first N interactions in time")


def add_models_parser(
    sub: Any, handler: Callable[[str], Callable[[Any, argparse.Namespace], int | None]]
) -> None:
    """Add ``models train|retrain|evaluate|list`` to the ``attune`` subparsers ``sub``."""
    models = sub.add_parser("models", help="train, evaluate and list recommendation models")
    models_sub = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    train = models_sub.add_parser(
        "train",
        help="train retrieval + ranking, publish them to the model repository, run the gate",
        description="Train on the gold Delta tables (default) or on --interactions FILE.",
    )
    add_data_arguments(train, required=False)
    train.add_argument("--no-publish", action="store_true", help="train and measure only")
    train.add_argument("--no-gate", action="store_true", help="publish without promoting")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--json", metavar="OUT", help="write the run's summary as JSON")
    train.set_defaults(handler=handler("models.train:cmd_train"))

    retrain = models_sub.add_parser(
        "retrain",
        help="train -> evaluate -> gate -> publish -> await-serving -> smoke -> record",
        description="The retraining run as steps; each reads what earlier steps wrote in the "
        "run folder and writes <step>.json there, so each may run in its own process (one "
        "Airflow task per step). No --step: every step, in order, in this process. Exit codes: "
        "0 done; 1 the run failed after publishing (version not available, smoke test failed: "
        "the previous versions are served again); 2 a problem the message says how to fix; "
        "3 the gate passed no model. The data options apply to the train step (default: the "
        "gold tables).",
    )
    retrain.add_argument(
        "--run-dir",
        metavar="DIR",
        help="the run folder (default for a run that starts with train: "
        "<var>/runs/retrain/<UTC time>; the other steps need it)",
    )
    retrain.add_argument(
        "--step",
        action="extend",
        nargs="+",
        choices=["train", "evaluate", "gate", "publish", "await-serving", "smoke", "record"],
        metavar="STEP",
        help="run only these steps (repeatable; run in the order above): train, evaluate, gate, "
        "publish, await-serving, smoke, record",
    )
    retrain.add_argument(
        "--json", action="store_true", help="print the steps' outputs as JSON (progress: stderr)"
    )
    retrain.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_data_arguments(retrain, required=False)
    retrain.set_defaults(handler=handler("models.retrain:cmd_retrain"))

    ev = models_sub.add_parser(
        "evaluate",
        help="train and score the baselines and the TFRS models on one split",
        description="Full ranking over all items, training items excluded; prints a table and "
        "writes JSON and a plot.",
    )
    add_data_arguments(ev)
    ev.add_argument(
        "--split",
        choices=["temporal", "user-stratified", "random"],
        default="temporal",
        help="how to split (default: temporal)",
    )
    ev.add_argument(
        "--test-fraction", type=float, help="test share (default: models.test_fraction)"
    )
    ev.add_argument(
        "--positive-threshold",
        type=float,
        help="ratings >= R are positives (default: models.positive_threshold; when null, chosen "
        "from the data: no ratings -> every view/click/purchase, top rating <= 5 -> every "
        "rating, wider scales -> >= 0.7 x the top, i.e. 7 on 0-10)",
    )
    ev.add_argument("--k", type=int, help="metric cut-off (default: models.k)")
    seeds = ev.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="random seed (default: models.seed)")
    seeds.add_argument(
        "--seeds",
        metavar="LIST",
        help="run once per seed, e.g. 42,43,44: the table shows mean ± std per model and "
        "metric, the JSON adds min-max and each seed's report, and the ratio of the best "
        "entry's and of served-pipeline's mean NDCG to the best baseline's",
    )
    ev.add_argument("--json", metavar="OUT", help="report path (default: var/reports/...)")
    ev.add_argument("--plot", metavar="PNG", help="plot path (default: the report's, .png)")
    ev.add_argument(
        "--models",
        metavar="LIST",
        help=f"comma-separated subset of {', '.join(MODEL_CHOICES)} (default: all)",
    )
    ev.add_argument(
        "--evaluate-on",
        choices=["test", "validation"],
        default="test",
        help="score on the test set, or on the validation split (for tuning)",
    )
    ev.add_argument(
        "--ablation", action="store_true", help="also retrain retrieval without each feature group"
    )
    ev.add_argument("--max-users", type=int, help="score a random sample of N test users")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.set_defaults(handler=handler("models.evaluate:cmd_evaluate"))

    sess = models_sub.add_parser(
        "evaluate-sessions",
        help="next-item recall@k of session prefixes on OTTO-format sessions (JSONL)",
        description="Session-based next-item task (models/sessions.py): events split in time, "
        "each later step of a session is a case (its prefix -> its item); popularity, session "
        "co-occurrence, the session's own history and the TFRS retrieval model ranked; prints "
        "a table, writes JSON and a plot. The bundled data/otto-sample is 20 sessions / 862 "
        "events: its figures are anecdotal. Exit codes: 0 done; 2 bad input (the message says "
        "how to fix).",
    )
    sess.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="OTTO sessions: a JSONL file or a folder holding train.jsonl (e.g. data/otto-sample)",
    )
    sess.add_argument("--max-sessions", type=int, help="read only the first N sessions")
    sess.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of the events (the latest) whose steps are test cases (default: 0.2)",
    )
    sess.add_argument("--k", type=int, default=20, help="metric cut-off (default: 20, OTTO's)")
    sess.add_argument("--seed", type=int, help="random seed (default: models.seed)")
    sess.add_argument(
        "--min-count",
        type=int,
        default=1,
        help="co-occurrence pairs seen in fewer sessions are dropped (default: 1; the batch's "
        "batch.cooccurrence.min_count is for production volumes)",
    )
    sess.add_argument(
        "--models",
        metavar="LIST",
        help="comma-separated subset of popularity, session-cooccurrence, session-history, "
        "tfrs-retrieval (default: all)",
    )
    sess.add_argument("--json", metavar="OUT", help="report path (default: var/reports/...)")
    sess.add_argument("--plot", metavar="PNG", help="plot path (default: the report's, .png)")
    sess.add_argument("--no-progress", action="store_true", help="no progress bars")
    sess.set_defaults(handler=handler("models.sessions:cmd_evaluate_sessions"))

    tune = models_sub.add_parser(
        "tune",
        help="search the retrieval model's hyper-parameters on the validation split",
        description="Trains the retrieval model once per trial on the validation split (the "
        "test split is never read), records every trial in a JSON report and prints the best "
        "as a YAML snippet for models.retrieval. Exit codes: 0 done, 2 bad options or data.",
    )
    add_data_arguments(tune)
    tune.add_argument(
        "--split",
        choices=["temporal", "user-stratified", "random"],
        default="temporal",
        help="how to split (default: temporal)",
    )
    tune.add_argument("--trials", type=int, default=8, help="trials incl. the configured one")
    tune.add_argument("--seed", type=int, help="random seed (default: models.seed)")
    tune.add_argument(
        "--param",
        action="append",
        metavar="NAME=V1,V2",
        help="search these values of a models.retrieval key (repeatable; replaces the default "
        "space: embedding_dim, temperature, learning_rate, epochs, sequence_encoder, "
        "uniform_negatives)",
    )
    tune.add_argument(
        "--budget-s",
        type=float,
        default=150.0,
        help="retrieval training seconds a trial may take to be chosen (default: 150, half "
        "the 5 minutes retrieval + ranking may take)",
    )
    tune.add_argument("--max-users", type=int, help="score a random sample of N users")
    tune.add_argument("--json", metavar="OUT", help="report path (default: var/reports/...)")
    tune.add_argument("--no-progress", action="store_true", help="no progress bars")
    tune.set_defaults(handler=handler("models.tune:cmd_tune"))

    ls = models_sub.add_parser("list", help="published versions and the served one per model")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler=handler("models.cli:cmd_list"))

    rb = models_sub.add_parser(
        "rollback",
        help="serve the version served before the current one (or --to VERSION) again",
        description="Without --to: the version that was served before the current one "
        "(promotions.jsonl); with --to: that published version. Recorded in promotions.jsonl "
        "as 'rollback by operator'. Exit codes: 0 done (or already served); 1 refused, "
        "nothing changed.",
    )
    rb.add_argument(
        "--model", choices=["retrieval", "ranking"], help="only this model (default: both)"
    )
    rb.add_argument("--to", type=int, metavar="VERSION", help="serve this published version")
    rb.add_argument("--json", action="store_true", help="machine-readable output")
    rb.set_defaults(handler=handler("models.rollback:cmd_rollback"))


def cmd_list(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune models list``: every published version, its metrics, and what is served."""
    from attune.model_repository import ModelRepository

    repo = ModelRepository(
        cfg.paths.resolve(cfg.models.repository_dir), cfg.models.serving_base_path
    )
    names = sorted(p.name for p in repo.root.iterdir() if p.is_dir()) if repo.root.is_dir() else []
    listing: dict[str, Any] = {"repository": str(repo.root), "models": {}}
    for name in names:
        served = repo.served_version(name)
        versions = []
        for v in repo.versions(name):
            meta = repo.metadata(name, v)
            holdout = (meta.get("metrics") or {}).get("holdout") or {}
            versions.append(
                {
                    "version": v,
                    "served": v == served,
                    "created_at": meta.get("created_at"),
                    "data_version": (meta.get("data") or {}).get("version"),
                    "holdout_ndcg": holdout.get("ndcg"),
                }
            )
        listing["models"][name] = {"served": served, "versions": versions}
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    print(f"model repository: {repo.root}")
    if not names:
        print("  (empty: run `attune models train`)")
    for name, entry in listing["models"].items():
        print(f"  {name}: served version {entry['served']}")
        for v in entry["versions"]:
            mark = "*" if v["served"] else " "
            print(
                f"   {mark} v{v['version']}  {v['created_at']}  data {v['data_version']}  "
                f"holdout NDCG {v['holdout_ndcg']}"
            )
    return 0

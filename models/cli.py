"""The ``attune models`` command group: ``train``, ``retrain``, ``evaluate`` and ``list``.

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
        help="ratings >= R are positives (default: models.positive_threshold)",
    )
    ev.add_argument("--k", type=int, help="metric cut-off (default: models.k)")
    ev.add_argument("--seed", type=int, help="random seed (default: models.seed)")
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

"""A var/ folder with everything the dashboard shows, written by hand (shared by the unit tests
and the screenshot test).

* the experiment report ``tests/fixtures/experiments/report-2026-12-05.json`` (the design's
  format: ``ranking_v1``, an A/B test with verdict ship and five days of history, and
  ``rankers_il``, an interleaving experiment still running), as ``latest.json`` and the dated
  file; :func:`stopped_experiment` derives a third one that breaks everything (sample ratio
  mismatch, a breached guardrail, verdict stop) for the warnings;
* a model repository: ``ranking`` v1 and v2 (v2 served), ``retrieval`` v1, two promotion
  decisions;
* the data-quality Delta tables ``quality/report`` (one failed check on the second run) and
  ``quality/drift``, written as a Delta client writes them (JSON commits, Parquet files,
  partition folders), with a partition replaced by a later commit;
* two bandit slots for the config (:func:`write_config` with ``bandits=True``) and the Redis
  hashes of one of them (:func:`bandit_hashes`: 48 hours in which the best arm's share grows),
  which the tests write with ``HSET``.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "experiments" / "report-2026-12-05.json"


def fixture_report() -> dict[str, Any]:
    report: dict[str, Any] = json.loads(FIXTURE.read_text())
    return report


def stopped_experiment(report: Mapping[str, Any]) -> dict[str, Any]:
    """``ranking_v1`` turned into ``banner_v2``: users 6000 vs 5200 on a 50/50 split, so the
    SRM test flags it (chi² = 2 * 400² / 5600 = 57.1, p ~ 4e-14), dismissals up 9% against an
    allowed 5%, verdict stop."""
    exp = copy.deepcopy(next(e for e in report["experiments"] if e["id"] == "ranking_v1"))
    exp.update(
        id="banner_v2",
        hypothesis="A larger home banner raises purchases",
        layer="home",
        verdict="stop",
        reason="sample ratio mismatch: users 6,000 vs 5,200 for a 50/50 split (p < 0.001)",
    )
    exp["variants"][1]["users"] = 5200
    exp["srm"] = {"chi2": 57.14, "p": 4.2e-14, "flagged": True}
    exp["guardrails"][0].update(value=0.01308, rel_change=0.09, breached=True)
    return exp


def live_guardrails_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """``report`` with ``ranking_v1``'s guardrails as ``spark/experiments.py`` writes them: the
    operational ones (``api_latency_p99_ms``, ``error_rate``) ``"measured": "live"`` with null
    values and ``breached`` (the nightly batch cannot read the API's metrics), ``dismiss_rate``
    ``"measured": "batch"`` as in the fixture."""
    out = copy.deepcopy(dict(report))
    exp = next(e for e in out["experiments"] if e["id"] == "ranking_v1")
    for g in exp["guardrails"]:
        if g["metric"] in ("api_latency_p99_ms", "error_rate"):
            g.update(
                control=None,
                value=None,
                rel_change=None,
                breached=None,
                measured="live",
                note="measured live from the API's Prometheus metrics",
            )
        else:
            g["measured"] = "batch"
    out["operational_guardrails"] = "measured live from the API's Prometheus metrics"
    return out


def variant_metrics(
    series: Mapping[tuple[str, str], tuple[Mapping[str, int], int, int, int]],
) -> str:
    """The API's per-variant series in Prometheus' text format, as ``attune/api/metrics.py``
    exports them: ``series`` maps (experiment, variant) to (cumulative buckets ``{le: count}``
    without +Inf, requests ok, degraded, error); +Inf and ``_count`` are all the requests."""
    lines = ["# TYPE attune_api_variant_seconds histogram"]
    for (experiment, variant), (cumulative, ok, degraded, error) in series.items():
        labels = f'experiment="{experiment}",variant="{variant}"'
        n = ok + degraded + error
        for le, count in cumulative.items():
            lines.append(f'attune_api_variant_seconds_bucket{{{labels},le="{le}"}} {count}.0')
        lines.append(f'attune_api_variant_seconds_bucket{{{labels},le="+Inf"}} {n}.0')
        lines.append(f"attune_api_variant_seconds_count{{{labels}}} {n}.0")
        lines.append(f"attune_api_variant_seconds_sum{{{labels}}} 1.0")
    lines.append("# TYPE attune_api_variant_requests counter")
    for (experiment, variant), (_, ok, degraded, error) in series.items():
        for outcome, count in (("ok", ok), ("degraded", degraded), ("error", error)):
            lines.append(
                f'attune_api_variant_requests_total{{experiment="{experiment}",'
                f'outcome="{outcome}",variant="{variant}"}} {count}.0'
            )
    return "\n".join(lines) + "\n"


def write_reports(reports_dir: Path, report: Mapping[str, Any]) -> None:
    reports_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1)
    (reports_dir / "latest.json").write_text(text)
    (reports_dir / f"{report['report_date']}.json").write_text(text)


def _evaluation(ndcg: float, recall: float) -> dict[str, Any]:
    return {
        "candidate": {
            "ndcg": ndcg,
            "recall": recall,
            "map": ndcg * 0.7,
            "hit_rate": recall * 1.5,
            "coverage": 0.004,
            "personalization": 0.2208,
            "novelty": 5.36,
            "gate_value": ndcg,
            "users": 2405,
        },
        "baselines": {
            "popularity": {"gate_value": 0.05298, "ndcg": 0.05298},
            "recent-popularity": {"gate_value": 0.11809, "ndcg": 0.11809},
        },
    }


def write_model_repository(root: Path) -> None:
    """ranking v1 (ndcg 0.1208) and v2 (0.1262, served), retrieval v1 (0.1287, served)."""
    versions = {
        ("ranking", 1): ("2026-12-01T03:10:00.000000Z", _evaluation(0.1208, 0.1966)),
        ("ranking", 2): ("2026-12-05T03:12:00.000000Z", _evaluation(0.1262, 0.2031)),
        ("retrieval", 1): ("2026-12-01T03:05:00.000000Z", _evaluation(0.1287, 0.2104)),
    }
    for (name, version), (created, evaluation) in versions.items():
        folder = root / name / str(version)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "name": name,
            "version": version,
            "created_at": created,
            "data": {"rows": 200000, "users": 16554},
            "evaluation": evaluation,
        }
        (folder / "attune_metadata.json").write_text(json.dumps(meta))
    serving = {
        "ranking": {"version": 2, "path": str(root / "ranking" / "2")},
        "retrieval": {"version": 1, "path": str(root / "retrieval" / "1")},
    }
    (root / "serving.json").write_text(json.dumps(serving))
    decisions = [
        {
            "model": "ranking",
            "version": 2,
            "promoted": True,
            "metric": "ndcg@10",
            "candidate": 0.1262,
            "served_version": 1,
            "served": 0.1208,
            "margin": 0.01,
            "reason": "0.1262 >= 0.1208 * 1.01 and >= 0.9 x recent-popularity 0.1181",
            "decided_at": "2026-12-05T03:12:30.000000Z",
        },
        {
            "model": "retrieval",
            "version": None,
            "promoted": False,
            "metric": "ndcg@10",
            "candidate": 0.1271,
            "served_version": 1,
            "served": 0.1287,
            "margin": 0.01,
            "reason": "0.1271 < 0.1287 * 1.01: not better than the served version",
            "decided_at": "2026-12-05T03:12:31.000000Z",
        },
    ]
    (root / "promotions.jsonl").write_text("".join(json.dumps(d) + "\n" for d in decisions))


# Delta tables, written by hand -------------------------------------------------------------

QUALITY_FIELDS = [
    ("run_date", "date"),
    ("stage", "string"),
    ("table_name", "string"),
    ("check", "string"),
    ("value", "double"),
    ("threshold", "double"),
    ("passed", "boolean"),
    ("detail", "string"),
]
DRIFT_FIELDS = [
    ("as_of_date", "date"),
    ("feature", "string"),
    ("users", "long"),
    ("users_equal", "long"),
    ("share_equal", "double"),
    ("mean_diff", "double"),
    ("max_diff", "double"),
]
_ARROW = {"string": "string", "double": "float64", "boolean": "bool", "long": "int64"}


def _schema_string(fields: Sequence[tuple[str, str]]) -> str:
    return json.dumps(
        {
            "type": "struct",
            "fields": [{"name": n, "type": t, "nullable": True, "metadata": {}} for n, t in fields],
        }
    )


class DeltaWriter:
    """Writes a partitioned Delta table the way Delta clients do: each :meth:`commit` writes one
    Parquet file per partition and a JSON commit of ``add`` actions (``remove`` for the files of
    the partitions it replaces); the first commit carries ``protocol`` and ``metaData``."""

    def __init__(self, path: Path, fields: Sequence[tuple[str, str]], partition: str) -> None:
        self.path, self.fields, self.partition = path, list(fields), partition
        self.version = -1
        self.files: dict[str, list[str]] = {}  # partition value -> live files
        (path / "_delta_log").mkdir(parents=True, exist_ok=True)

    def commit(self, rows: Sequence[Mapping[str, Any]], *, replace: bool = True) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.version += 1
        actions: list[dict[str, Any]] = []
        if self.version == 0:
            actions.append({"protocol": {"minReaderVersion": 1, "minWriterVersion": 2}})
            actions.append(
                {
                    "metaData": {
                        "id": str(uuid.uuid4()),
                        "format": {"provider": "parquet", "options": {}},
                        "schemaString": _schema_string(self.fields),
                        "partitionColumns": [self.partition],
                        "configuration": {},
                        "createdTime": 0,
                    }
                }
            )
        by_part: dict[str, list[Mapping[str, Any]]] = {}
        for row in rows:
            by_part.setdefault(str(row[self.partition]), []).append(row)
        schema = pa.schema(
            [(n, _ARROW[t]) for n, t in self.fields if n != self.partition]  # type: ignore[misc]
        )
        for value, part_rows in by_part.items():
            if replace:
                for old in self.files.pop(value, []):
                    actions.append(
                        {"remove": {"path": old, "deletionTimestamp": 0, "dataChange": True}}
                    )
            # a space in the folder name, as Delta escapes it in the log (%20)
            rel = f"{self.partition}={value}/part {self.version:05d}-{uuid.uuid4().hex}.parquet"
            (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(
                [{k: v for k, v in r.items() if k != self.partition} for r in part_rows],
                schema=schema,
            )
            pq.write_table(table, self.path / rel)
            escaped = rel.replace(" ", "%20")
            self.files.setdefault(value, []).append(escaped)
            actions.append(
                {
                    "add": {
                        "path": escaped,
                        "partitionValues": {self.partition: value},
                        "size": (self.path / rel).stat().st_size,
                        "modificationTime": 0,
                        "dataChange": True,
                    }
                }
            )
        log = self.path / "_delta_log" / f"{self.version:020d}.json"
        log.write_text("".join(json.dumps(a) + "\n" for a in actions))
        return self.version


def quality_rows(run_date: date, failed: bool) -> list[dict[str, Any]]:
    rows = [
        ("bronze", "bronze/events", "schema", 0.0, 0.0, True, "bronze has every column"),
        ("bronze", "bronze/events", "null_rate:event_id", 0.0, 0.0, True, "no nulls"),
        (
            "bronze",
            "bronze/events",
            "duplicate_rate",
            0.001,
            0.05,
            True,
            "0.10% of the day's rows repeat an event_id, within 5.00%",
        ),
        (
            "bronze",
            "bronze/events",
            "volume",
            0.12 if failed else 1.04,
            0.2,
            not failed,
            "the day's rows are 0.12 x the 7-day average, below the minimum 0.2"
            if failed
            else "the day's rows are 1.04 x the 7-day average",
        ),
        ("silver", "silver/events", "bot_rate", 0.0, 0.5, True, "no bots in the window"),
    ]
    return [
        {
            "run_date": run_date,
            "stage": s,
            "table_name": f"/lake/{t}",
            "check": c,
            "value": v,
            "threshold": th,
            "passed": p,
            "detail": d,
        }
        for s, t, c, v, th, p, d in rows
    ]


def drift_rows(as_of: date) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"feature": "status:comparable", "users": 480, "users_equal": 480},
        {"feature": "status:behind", "users": 12, "users_equal": 12},
        {"feature": "status:newer", "users": 8, "users_equal": 8},
        {"feature": "status:missing", "users": 0, "users_equal": 0},
        {"feature": "recent_items", "users": 492, "users_equal": 480, "mean_diff": 0.012},
        {"feature": "counters", "users": 492, "users_equal": 492, "mean_diff": 0.0},
        {"feature": "affinities", "users": 492, "users_equal": 492, "mean_diff": 1e-16},
    ]
    for r in rows:
        r["as_of_date"] = as_of
        r["share_equal"] = r["users_equal"] / r["users"] if r["users"] else None
        r.setdefault("mean_diff", None)
        r["max_diff"] = r["mean_diff"]
    return rows


def write_quality_tables(lake: Path) -> None:
    """``quality/report``: runs of 2026-12-04 (all passed) and 2026-12-05 (volume failed; its
    first write had every check passing and was replaced); ``quality/drift`` of 2026-12-05."""
    report = DeltaWriter(lake / "quality" / "report", QUALITY_FIELDS, "run_date")
    report.commit(quality_rows(date(2026, 12, 4), failed=False))
    report.commit(quality_rows(date(2026, 12, 5), failed=False))
    report.commit(quality_rows(date(2026, 12, 5), failed=True))  # replaces the partition
    drift = DeltaWriter(lake / "quality" / "drift", DRIFT_FIELDS, "as_of_date")
    drift.commit(drift_rows(date(2026, 12, 5)))


def write_config(
    var_dir: Path,
    path: Path,
    *,
    redis_port: int = 1,
    redis_db: int = 0,
    prefix: str = "att",
    bandits: bool = False,
) -> Path:
    """A config file with everything under ``var_dir`` and no service reachable: every port is
    1 (nothing listens there; Redis too unless ``redis_port`` says otherwise), so the live page
    shows its "not running" states. ``bandits``: the two bandit slots of :data:`BANDIT_SLOTS`."""
    import yaml

    cfg: dict[str, Any] = {
        "paths": {"var_dir": str(var_dir)},
        "redis": {"port": redis_port, "db": redis_db},
        "speed": {"online_store": {"key_prefix": prefix}},
        "collector": {"port": 1},
        "api": {"port": 1},
        "serving": {"rest_port": 1, "grpc_port": 2},
    }
    if bandits:
        cfg["api"]["content_slots"] = {
            slot: [{"variant": v} for v in arms] for slot, arms in BANDIT_SLOTS.items()
        }
        cfg["api"]["bandits"] = {
            "home_banner": {"policy": "thompson", "epsilon": 0.05},
            "search_tip": {"policy": "linucb", "epsilon": 0.1},
        }
    path.write_text(yaml.safe_dump(cfg))
    return path


# Bandits ------------------------------------------------------------------------------------

BANDIT_SLOTS = {
    "home_banner": ["welcome", "drama_picks", "win_back", "default"],
    "search_tip": ["tip_a", "tip_b"],
}
"""Two content slots with a bandit each: ``home_banner`` (Thompson sampling, counts and 48 hours
of history in Redis) and ``search_tip`` (LinUCB, nothing counted yet: the empty state)."""
BANDIT_RATES = {"default": 0.03, "drama_picks": 0.07, "welcome": 0.04, "win_back": 0.02}
BANDIT_HOURS = 48
BANDIT_PER_HOUR = 240
HOUR_MS = 3_600_000


def bandit_history(last_hour_ms: int) -> dict[tuple[int, str], tuple[int, int]]:
    """``home_banner``'s impressions and clicks per (hour start ms, arm) over the 48 hours up
    to ``last_hour_ms``: 240 impressions an hour, ``drama_picks`` (rate 7%) getting a share that
    grows linearly from 25% in the first hour to 85% in the last, the three others splitting
    the rest equally; clicks are ``round(impressions * rate)``."""
    out: dict[tuple[int, str], tuple[int, int]] = {}
    first = last_hour_ms - (BANDIT_HOURS - 1) * HOUR_MS
    for h in range(BANDIT_HOURS):
        best = 0.25 + 0.60 * h / (BANDIT_HOURS - 1)
        for arm, rate in BANDIT_RATES.items():
            share = best if arm == "drama_picks" else (1.0 - best) / 3
            n = round(BANDIT_PER_HOUR * share)
            out[(first + h * HOUR_MS, arm)] = (n, round(n * rate))
    return out


def bandit_hashes(last_hour_ms: int) -> tuple[dict[str | bytes, int], dict[str | bytes, int]]:
    """``home_banner``'s state hash (``n:<arm>``, ``c:<arm>``: the history's sums) and history
    hash (``<hour ms>:n:<arm>``, ``<hour ms>:c:<arm>``), as the speed layer writes them."""
    history = bandit_history(last_hour_ms)
    state: dict[str | bytes, int] = {}  # (redis-py's key type: HSET takes them as they are)
    fields: dict[str | bytes, int] = {}
    for (hour, arm), (n, c) in history.items():
        state[f"n:{arm}"] = state.get(f"n:{arm}", 0) + n
        state[f"c:{arm}"] = state.get(f"c:{arm}", 0) + c
        fields[f"{hour}:n:{arm}"] = n
        fields[f"{hour}:c:{arm}"] = c
    return state, fields


def build(var_dir: Path, *, with_stopped: bool = False) -> None:
    """Everything: reports, model repository, data-quality tables."""
    report = fixture_report()
    if with_stopped:
        report["experiments"].append(stopped_experiment(report))
    write_reports(var_dir / "reports" / "experiments", report)
    write_model_repository(var_dir / "models")
    write_quality_tables(var_dir / "lake")

"""Drift report: the speed layer's features in Redis against the batch recomputation.

For a deterministic sample of ``batch.views.drift_sample_users`` users of
``gold/user_features`` (ordered by a hash of the user and the date, so each night looks at
different users and a re-run at the same ones) the report reads the users' online features in
one pipelined round trip per 200 users (:func:`attune.online_store.read_many_user_features`)
and compares them feature by feature with the batch's row. Each sampled user is first put in
one status:

``comparable``  Redis and the batch saw the same latest event;
``behind``      Redis's latest event is older than the batch's: the stream missed events;
``newer``       Redis has events after the logical date (live traffic): not compared;
``missing``     Redis has nothing for the user (expired, erased, or never streamed).

``comparable`` and ``behind`` users are compared on recent items, counters, event count,
affinities (within ``1e-6`` relative), dismissed items, ignored genres and the session id. The
report (``quality/drift``, partitioned by ``as_of_date``) has one row per status and per
feature: users, users equal, share equal, mean and max difference (1 - Jaccard for lists,
absolute for numbers). It holds no user ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attune.online_store import UserFeatures
    from spark.context import RunContext

DRIFT_DDL = (
    "as_of_date DATE, feature STRING, users BIGINT, users_equal BIGINT, share_equal DOUBLE, "
    "mean_diff DOUBLE, max_diff DOUBLE"
)
FEATURES = (
    "recent_items",
    "counters",
    "events",
    "affinities",
    "dismissed_items",
    "ignored_genres",
    "session_id",
)
TOLERANCE = 1e-6


def _jaccard_distance(a: Sequence[str], b: Sequence[str]) -> float:
    sa, sb = set(a), set(b)
    if not sa and not sb:
        return 0.0
    return 1.0 - len(sa & sb) / len(sa | sb)


def _affinity_diff(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    return max((abs(a.get(g, 0.0) - b.get(g, 0.0)) for g in a.keys() | b.keys()), default=0.0)


def _affinities_equal(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return all(
        math.isclose(a.get(g, 0.0), b.get(g, 0.0), rel_tol=TOLERANCE, abs_tol=TOLERANCE)
        for g in a.keys() | b.keys()
    )


@dataclass
class FeatureDiff:
    users: int = 0
    equal: int = 0
    diffs: list[float] = field(default_factory=list)

    def add(self, equal: bool, diff: float) -> None:
        self.users += 1
        self.equal += int(equal)
        self.diffs.append(diff)


def status_of(batch: Mapping[str, Any], online: UserFeatures) -> str:
    if online.last_event_ms is None and not online.counters and not online.recent:
        return "missing"
    last = online.last_event_ms or 0
    if last > batch["last_ms"]:
        return "newer"
    if last < batch["last_ms"]:
        return "behind"
    return "comparable"


def compare(batch: Mapping[str, Any], online: UserFeatures, diffs: dict[str, FeatureDiff]) -> None:
    """Add one user's comparison to ``diffs`` (one :class:`FeatureDiff` per feature)."""
    recent_b = list(batch["recent_items"])
    diffs["recent_items"].add(
        recent_b == online.recent_item_ids, _jaccard_distance(recent_b, online.recent_item_ids)
    )
    counters_b = {k: int(v) for k, v in (batch["counters"] or {}).items() if v}
    counters_o = {k: v for k, v in online.counters.items() if k != "events" and v}
    diffs["counters"].add(
        counters_b == counters_o,
        float(
            sum(
                abs(counters_b.get(k, 0) - counters_o.get(k, 0))
                for k in counters_b.keys() | counters_o.keys()
            )
        ),
    )
    events_o = online.counters.get("events", 0)
    diffs["events"].add(events_o == batch["events"], float(abs(events_o - batch["events"])))
    aff_b = dict(batch["affinities"] or {})
    diffs["affinities"].add(
        _affinities_equal(aff_b, online.affinities), _affinity_diff(aff_b, online.affinities)
    )
    dismissed_b = list(batch["dismissed_items"])
    diffs["dismissed_items"].add(
        dismissed_b == online.dismissed_items,
        _jaccard_distance(dismissed_b, online.dismissed_items),
    )
    ignored_b = sorted(batch["ignored_genres"])
    diffs["ignored_genres"].add(
        ignored_b == online.ignored_genres, _jaccard_distance(ignored_b, online.ignored_genres)
    )
    session_b = batch["session"]["session_id"] if batch["session"] else None
    session_o = online.session.session_id if online.session else None
    diffs["session_id"].add(session_b == session_o, float(session_b != session_o))


def drift_rows(
    batch_rows: Sequence[Mapping[str, Any]], online: Mapping[str, UserFeatures]
) -> list[tuple[str, int, int, float | None, float | None]]:
    """``(feature, users, users_equal, mean_diff, max_diff)`` rows of the report."""
    statuses: dict[str, int] = {s: 0 for s in ("comparable", "behind", "newer", "missing")}
    diffs = {f: FeatureDiff() for f in FEATURES}
    for row in batch_rows:
        o = online[row["user"]]
        status = status_of(row, o)
        statuses[status] += 1
        if status in ("comparable", "behind"):
            compare(row, o, diffs)
    out: list[tuple[str, int, int, float | None, float | None]] = [
        (f"status:{s}", n, n, None, None) for s, n in statuses.items()
    ]
    for name, d in diffs.items():
        out.append(
            (
                name,
                d.users,
                d.equal,
                sum(d.diffs) / len(d.diffs) if d.diffs else None,
                max(d.diffs) if d.diffs else None,
            )
        )
    return out


def run_drift(ctx: RunContext) -> dict[str, object]:
    from pyspark.sql import functions as F

    from attune.online_store import OnlineStore, read_many_user_features
    from attune.redis_connect import connect
    from spark.tables import read_table, write_table

    cfg, lake, day = ctx.cfg, ctx.lake, ctx.run_date
    n = cfg.batch.views.drift_sample_users
    if n == 0:
        return {"skipped": "batch.views.drift_sample_users is 0"}
    features = read_table(
        ctx.spark, lake.gold_user_features, ctx.version_of(lake.gold_user_features)
    )
    sample = (
        features.orderBy(F.xxhash64("user", F.lit(day.isoformat())), "user")
        .limit(n)
        .select(
            "user",
            "last_ms",
            "events",
            "recent_items",
            "counters",
            "affinities",
            "dismissed_items",
            "ignored_genres",
            "session",
        )
        .collect()
    )
    rows = [r.asDict(recursive=True) for r in sample]
    store = OnlineStore.from_config(cfg)
    client = connect(cfg.redis)
    online: dict[str, UserFeatures] = {}
    try:
        users = [r["user"] for r in rows]
        for i in range(0, len(users), 200):
            online.update(read_many_user_features(client, users[i : i + 200], store))
    finally:
        client.close()
    report = drift_rows(rows, online)
    df = ctx.spark.createDataFrame(
        [
            (day, f, users, equal, (equal / users) if users else None, mean, mx)
            for f, users, equal, mean, mx in report
        ],
        DRIFT_DDL,
    )
    write_table(
        df,
        lake.quality_drift,
        partition_by="as_of_date",
        replace_where=f"as_of_date = DATE'{day.isoformat()}'",
    )
    summary = {f: {"users": u, "equal": e} for f, u, e, _, _ in report}
    compared = summary["recent_items"]["users"]
    ctx.progress(
        f"drift: {len(rows)} sampled user(s), {compared} compared; equal: "
        + ", ".join(f"{f} {summary[f]['equal']}/{summary[f]['users']}" for f in FEATURES)
    )
    return dict(summary)

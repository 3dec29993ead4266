"""Today's partial counts per experiment variant, kept in Redis by the speed layer.

The nightly batch computes the experiments' results from the lake (exact, attributed, a day
late). For the day in progress, the speed layer counts as events arrive, per event date (UTC,
like bronze's ``event_date``), experiment and variant:

``impressions``
    ``impression`` events, and the distinct users who saw one (a HyperLogLog: about 0.8 %
    standard error, 12 kB per variant and day at most);
``clicks``
    ``rec_click`` and ``click`` events;
``purchases``
    ``purchase`` events;

of events that carry a ``recommendation_id``. The experiment and variant are groups 1 and 2 of
``batch.recommendation_id_pattern`` on it, ``none`` when a group is empty or the id does not
match (:func:`parse_recommendation_id`: the rule of :func:`spark.gold.experiment_metrics`,
with Python's ``re``; the default pattern means the same in Java's regex, which the batch
uses). Counts are not attributed (a click counts for the variant its id names, whenever it
happened) and cover the events the online store applies: those with personalization consent.
The nightly results are the reference; these show that traffic flows and roughly how.

Where: :meth:`attune.keys.Keys.experiment_live` (hash ``<experiment>|<variant>|<count>`` ->
n) and :meth:`attune.keys.Keys.experiment_live_users` (HyperLogLog), kept
:data:`LIVE_TTL_S` after their last write. Who writes: the online store's write script
(:mod:`attune.online_store`), inside the same per-user script call that applies the event's
features and guarded by the same "already applied" marker, so a replayed micro-batch counts
nothing twice; the batch layer's correction of the online store goes through the same script,
so what the stream missed is added once. :func:`live_fields` is the pure step, shared by every
writer, that turns an event into what the script counts. :func:`read_live_counts` reads a day.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

from attune.redis_connect import is_cluster

if TYPE_CHECKING:
    from redis import Redis

    from attune.keys import Keys

LIVE_COUNTS: dict[str, str] = {
    "impression": "impressions",
    "rec_click": "clicks",
    "click": "clicks",
    "purchase": "purchases",
}
"""Which event types are counted, under which name."""
COUNT_NAMES = ("impressions", "clicks", "purchases")
LIVE_TTL_S = 3 * 24 * 3600
"""How long a day's counts stay after their last write."""
NO_EXPERIMENT = "none"
"""The experiment and variant of an id the pattern does not name them in (as the batch)."""
DEFAULT_PATTERN = r"^([^:]+):([^:]+):"
"""``batch.recommendation_id_pattern``'s default."""


@lru_cache(maxsize=16)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def parse_recommendation_id(
    recommendation_id: str, pattern: str = DEFAULT_PATTERN
) -> tuple[str, str]:
    """``(experiment, variant)``: groups 1 and 2 of ``pattern`` searched in the id (like
    Spark's ``regexp_extract``), :data:`NO_EXPERIMENT` for an empty group or no match."""
    match = _compiled(pattern).search(recommendation_id)
    if match is None:
        return NO_EXPERIMENT, NO_EXPERIMENT
    groups = match.groups()
    experiment = groups[0] if len(groups) > 0 and groups[0] else NO_EXPERIMENT
    variant = groups[1] if len(groups) > 1 and groups[1] else NO_EXPERIMENT
    return experiment, variant


def event_day(ts_ms: int) -> str:
    """The UTC date of an event time (epoch ms), ``YYYY-MM-DD``: bronze's ``event_date``."""
    return datetime.fromtimestamp(ts_ms / 1000, UTC).date().isoformat()


def live_fields(
    recommendation_id: str | None, event_type: str, ts_ms: int, pattern: str = DEFAULT_PATTERN
) -> dict[str, str] | None:
    """What the write script counts for one event, or None when it counts nothing.

    ``{"xd": day, "xe": experiment, "xv": variant, "xk": count name}``; the script adds 1 to
    field ``<xe>|<xv>|<xk>`` of the day's hash and, for an impression, the user to the
    variant's HyperLogLog.
    """
    kind = LIVE_COUNTS.get(event_type)
    if kind is None or not recommendation_id:
        return None
    experiment, variant = parse_recommendation_id(recommendation_id, pattern)
    return {"xd": event_day(ts_ms), "xe": experiment, "xv": variant, "xk": kind}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_live_hash(raw: dict[Any, Any]) -> dict[str, dict[str, dict[str, int]]]:
    """A day's hash as ``{experiment: {variant: {count name: n}}}`` (every count present)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for field, value in raw.items():
        name = _text(field)
        head, _, count = name.rpartition("|")
        experiment, sep, variant = head.partition("|")
        if not sep or count not in COUNT_NAMES:
            continue  # not a field this module writes
        counts = out.setdefault(experiment, {}).setdefault(variant, dict.fromkeys(COUNT_NAMES, 0))
        counts[count] = int(value)
    return out


def read_live_counts(
    redis: Redis, keys: Keys, day: date | str
) -> dict[str, dict[str, dict[str, int]]]:
    """``{experiment: {variant: {"impressions", "clicks", "purchases", "users"}}}`` of ``day``
    (a date or ``YYYY-MM-DD``), in two round trips; empty when nothing was counted."""
    day_s = day.isoformat() if isinstance(day, date) else day
    out = parse_live_hash(redis.hgetall(keys.experiment_live(day_s)))
    pairs = [(e, v) for e, variants in out.items() for v in variants]
    if pairs:
        pipe = redis.pipeline(transaction=False)
        # redis-py's cluster pipeline refuses pfcount() (a multi-key PFCOUNT could span slots),
        # not the command: one key per PFCOUNT is sent raw there
        count = partial(pipe.execute_command, "PFCOUNT") if is_cluster(redis) else pipe.pfcount
        for experiment, variant in pairs:
            count(keys.experiment_live_users(day_s, experiment, variant))
        for (experiment, variant), users in zip(pairs, pipe.execute(), strict=True):
            out[experiment][variant]["users"] = int(users)
    return out

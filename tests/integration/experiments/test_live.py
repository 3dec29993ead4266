"""Today's live experiment counts through the online store's write script, against real Redis.

Rows are written by hand in the payload format of :func:`attune.features.online_rows` (with
``rc``, the event's recommendation id, on the event row), applied by
:class:`attune.online_store.OnlineStoreWriter` and read back with
:func:`attune.experiments.live.read_live_counts`. Redis db 12 (shared with the online store's
tests), under a key prefix of this test's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from attune.config import AttuneConfig
from attune.experiments.live import LIVE_TTL_S, read_live_counts
from attune.online_store import OnlineStore, OnlineStoreWriter

pytestmark = pytest.mark.integration

REDIS_DB = 12
T0_MS = 1_362_139_200_000  # 2013-03-01T12:00:00Z (date -u -d ... +%s, times 1000)
MIN = 60_000
DAY1, DAY2 = "2013-03-01", "2013-03-02"


@pytest.fixture
def client(cfg: AttuneConfig) -> Iterator[redis.Redis]:
    r = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=REDIS_DB)
    yield r
    r.close()


@pytest.fixture
def store(client: redis.Redis) -> Iterator[OnlineStore]:
    s = OnlineStore(prefix=f"t{uuid.uuid4().hex[:8]}", trending_windows_s=(3600,))
    yield s
    keys = list(client.scan_iter(match=f"{s.prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def row(
    user: str, iid: str, t: int, typ: str, item: str, rec: str | None, event_row: bool = True
) -> tuple[str, int, str, str]:
    payload: dict[str, Any] = {"i": iid, "t": t, "y": typ, "it": item}
    if event_row:
        payload["x"] = 1
        if rec is not None:
            payload["rc"] = rec
    return (user, t, iid, orjson.dumps(payload).decode())


ROWS = [
    # u1: an impression of two items from the treatment (one count: the event row), a click
    # and a purchase on it; a dismissal with the id (not a live count)
    row("u1", "e1#0", T0_MS, "impression", "m1", "exp1:treatment:r1"),
    row("u1", "e1#1", T0_MS, "impression", "m2", "exp1:treatment:r1", event_row=False),
    row("u1", "e2#0", T0_MS + MIN, "rec_click", "m1", "exp1:treatment:r1"),
    row("u1", "e3#0", T0_MS + 2 * MIN, "purchase", "m1", "exp1:treatment:r1"),
    row("u1", "e4#0", T0_MS + 3 * MIN, "dismiss", "m2", "exp1:treatment:r1"),
    # u2 and u3: treatment impressions too (3 distinct users); u2 sees control once as well
    row("u2", "f1#0", T0_MS + 5 * MIN, "impression", "m1", "exp1:treatment:r2"),
    row("u3", "g1#0", T0_MS + 6 * MIN, "impression", "m3", "exp1:treatment:r3"),
    row("u2", "f2#0", T0_MS + 7 * MIN, "impression", "m4", "exp1:control:r4"),
    row("u2", "f3#0", T0_MS + 8 * MIN, "click", "m4", "exp1:control:r4"),
    # no experiment in the id, and an event without an id (not counted)
    row("u3", "g2#0", T0_MS + 9 * MIN, "impression", "m5", "legacy-id"),
    row("u3", "g3#0", T0_MS + 10 * MIN, "impression", "m6", None),
    # the next day (UTC): 12 h after T0 is midnight
    row("u1", "e5#0", T0_MS + 12 * 60 * MIN, "impression", "m1", "exp1:treatment:r5"),
]


def test_writer_counts_once_and_reader_reads_them(client: redis.Redis, store: OnlineStore) -> None:
    writer = OnlineStoreWriter(client, store)
    writer.apply(ROWS)
    # Worked out from ROWS: treatment on day 1 has impressions e1, f1, g1 (3; e1#1 is not an
    # event row), users u1 u2 u3, the click e2 and the purchase e3; control has f2 and the
    # click f3, user u2; "legacy-id" matches no experiment: none/none; g3 has no id.
    day1 = {
        "exp1": {
            "treatment": {"impressions": 3, "clicks": 1, "purchases": 1, "users": 3},
            "control": {"impressions": 1, "clicks": 1, "purchases": 0, "users": 1},
        },
        "none": {"none": {"impressions": 1, "clicks": 0, "purchases": 0, "users": 1}},
    }
    day2 = {"exp1": {"treatment": {"impressions": 1, "clicks": 0, "purchases": 0, "users": 1}}}
    assert read_live_counts(client, store.keys, DAY1) == day1
    assert read_live_counts(client, store.keys, DAY2) == day2
    assert read_live_counts(client, store.keys, "2013-03-03") == {}

    # A replayed micro-batch, and the same rows in other batches and order: nothing changes
    # (the write script's "applied" marker guards the counts too).
    writer.apply(ROWS)
    writer.apply(reversed(ROWS[:5]))
    writer.apply(ROWS[5:])
    assert read_live_counts(client, store.keys, DAY1) == day1
    assert read_live_counts(client, store.keys, DAY2) == day2

    # Both kinds of key expire 3 days after their last write.
    for key in (
        store.keys.experiment_live(DAY1),
        store.keys.experiment_live_users(DAY1, "exp1", "treatment"),
    ):
        assert LIVE_TTL_S - 60 <= client.ttl(key) <= LIVE_TTL_S


def test_another_pattern_from_the_store(client: redis.Redis, store: OnlineStore) -> None:
    slash = OnlineStore(
        prefix=store.prefix, trending_windows_s=(3600,), recommendation_id_pattern=r"^(\w+)/(\w+)/"
    )
    OnlineStoreWriter(client, slash).apply(
        [row("u9", "h1#0", T0_MS, "impression", "m1", "exp9/b/xyz")]
    )
    assert read_live_counts(client, store.keys, DAY1) == {
        "exp9": {"b": {"impressions": 1, "clicks": 0, "purchases": 0, "users": 1}}
    }

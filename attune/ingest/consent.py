"""Per-user consent state in Redis.

Key: ``P:u:{subject}:consent`` (:meth:`attune.keys.Keys.consent`) is a string holding the JSON
object of the flags the user has explicitly set, e.g. ``{"analytics":false}`` (keys among
``analytics``, ``personalization``, ``marketing``); ``subject`` is the pseudonymized user id
(else the pseudonymized anonymous id), the same value as the Kafka record key. Flags the user
never set are absent, so a change of ``privacy.default_consent`` applies to them. The key sits
under the user's prefix, so erasing a user deletes it with the rest of the user's keys.

The collector reads the state of every subject of a batch with ONE ``MGET`` (one round trip,
one command: about 4x less CPU than a pipeline of per-user hash reads) and writes back the
subjects whose ``consent_update`` events it accepted with one ``MSET``, only when there are any.

Migration. Older versions kept the state in ``consent:<subject>``, outside the user's prefix.
:func:`migrate_legacy_consent` renames every such key to the new name, unless the new key already
exists (then it holds newer state, written by this version, and the old key is only deleted). It is
idempotent: ``attune store migrate-keys`` runs it, and every :class:`ConsentStore` runs it once per
process, at start-up (:meth:`ConsentStore.migrate`, called by the collector and the API when they
start) or, if Redis could not be reached then, before its first read; so the collector never reads
a state written by an older version as missing (:mod:`attune.keys` explains why this, not a
fallback read per request). A process of an older version still running during an upgrade writes
the old keys again: run ``attune store migrate-keys`` once the last of them has stopped. Each key
moves in one script (atomic, with its TTL). On a Redis Cluster (``redis.cluster: true``) the old
and new names live in different slots, which no script may span: there each key moves in three
steps from the client instead (read the old value and TTL; ``SET NX`` the new key with them; delete
the old key only if it still holds the value read, :data:`DELETE_IF_SAME_SCRIPT`), with the same
outcomes; it is not atomic, so a process of an older version writing the old key between the
steps keeps that key for the next run. In a cluster the collector's one ``MGET``/``MSET`` become
``mget_nonatomic``/``mset_nonatomic`` (one ``MGET``/``MSET`` per slot, pipelined per master).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from attune.config import AttuneConfig
from attune.ingest.pipeline import CONSENT_FLAGS
from attune.keys import Keys, KeyTemplate
from attune.redis_connect import connect_async, is_cluster

log = logging.getLogger(__name__)

# KEYS[1]: the old key, KEYS[2]: the new one. Returns 1 when the value moved, 2 when the new key
# already held (newer) state and the old one was only deleted, 0 when the old key is gone or is
# not a string (not ours: left alone).
MIGRATE_SCRIPT = r"""
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', KEYS[1])
  return 2
end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
"""


# KEYS[1]: the old key. ARGV[1]: the value read from it. Deletes it only if it still holds that
# value (the cluster migration's last step; one key, so one slot).
DELETE_IF_SAME_SCRIPT = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class ConsentMigration:
    """What one :func:`migrate_legacy_consent` run did."""

    moved: int = 0
    """old keys renamed to the new name"""
    superseded: int = 0
    """old keys deleted because the new key already held newer state"""
    skipped: int = 0
    """old names that vanished meanwhile or do not hold a string (left alone)"""


async def migrate_legacy_consent(
    client: aioredis.Redis, keys: Keys, batch: int = 500
) -> ConsentMigration:
    """Move every ``consent:<subject>`` key to ``keys.consent(subject)`` (see the module
    docstring); one SCAN over the database and one pipeline of scripts per ``batch`` keys."""
    old = KeyTemplate.of(Keys.legacy_consent)
    result = ConsentMigration()
    found: list[str] = []

    async def flush() -> None:
        if is_cluster(client):
            await _move_in_cluster(client, keys, old, found, result)
            found.clear()
            return
        pipe = client.pipeline(transaction=False)
        for key in found:
            subject = old.id_of(key)
            assert subject is not None  # the SCAN pattern is the family's
            pipe.eval(MIGRATE_SCRIPT, 2, key, keys.consent(subject))
        for outcome in await pipe.execute():
            if outcome == 1:
                result.moved += 1
            elif outcome == 2:
                result.superseded += 1
            else:
                result.skipped += 1
        found.clear()

    async for key in client.scan_iter(match=old.glob(), count=1000):
        found.append(key.decode() if isinstance(key, bytes) else key)
        if len(found) >= batch:
            await flush()
    if found:
        await flush()
    return result


async def _move_in_cluster(
    client: aioredis.Redis,
    keys: Keys,
    old: KeyTemplate,
    found: Sequence[str],
    result: ConsentMigration,
) -> None:
    """:data:`MIGRATE_SCRIPT`'s outcomes for ``found`` without a cross-slot script: three
    pipelines (each may span slots; redis-py splits it per master)."""
    pipe = client.pipeline(transaction=False)
    for key in found:
        pipe.type(key)
        pipe.get(key)
        pipe.pttl(key)
    replies = await pipe.execute(raise_on_error=False)  # GET of a non-string: WRONGTYPE
    moving: list[tuple[str, str, bytes]] = []  # (old key, new key, value)
    pipe = client.pipeline(transaction=False)
    for n, key in enumerate(found):
        kind, value, pttl = replies[3 * n : 3 * n + 3]
        if (kind.decode() if isinstance(kind, bytes) else kind) != "string" or value is None:
            result.skipped += 1
            continue
        subject = old.id_of(key)
        assert subject is not None  # the SCAN pattern is the family's
        new = keys.consent(subject)
        moving.append((key, new, value))
        pipe.set(new, value, nx=True, px=pttl if pttl and pttl > 0 else None)
    if not moving:
        return
    written = await pipe.execute()
    pipe = client.pipeline(transaction=False)
    for key, _, value in moving:
        pipe.eval(DELETE_IF_SAME_SCRIPT, 1, key, value)
    await pipe.execute()
    for was_set in written:
        if was_set:
            result.moved += 1
        else:
            result.superseded += 1


def decode_state(raw: bytes | str | None) -> dict[str, bool]:
    """A stored value as ``{flag: bool}``; unknown flags and non-booleans are ignored."""
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in CONSENT_FLAGS and isinstance(v, bool)}


def encode_state(state: Mapping[str, bool]) -> bytes:
    return orjson.dumps(
        {k: bool(v) for k, v in state.items() if k in CONSENT_FLAGS}, option=orjson.OPT_SORT_KEYS
    )


class ConsentStore:
    """Async access to the consent state (``redis.asyncio``; never blocks the event loop)."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._migrated = False
        self._migrating = asyncio.Lock()

    @classmethod
    def from_config(cls, cfg: AttuneConfig) -> ConsentStore:
        client = connect_async(
            cfg.redis,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            max_connections=64,
        )
        return cls(client, Keys.from_config(cfg))

    async def migrate(self) -> ConsentMigration | None:
        """Move the keys of older versions, once per process (later calls return None)."""
        if self._migrated:
            return None
        async with self._migrating:
            if self._migrated:
                return None
            result = await migrate_legacy_consent(self.client, self.keys)
            self._migrated = True
        if result.moved or result.superseded:
            log.info(
                "consent: moved %d key(s) of an older version under the users' prefix "
                "(%d superseded by newer state)",
                result.moved,
                result.superseded,
            )
        return result

    async def read_many(self, subjects: Sequence[str]) -> dict[str, dict[str, bool]]:
        """The stored state of each subject (subjects without any are left out)."""
        if not subjects:
            return {}
        if not self._migrated:
            await self.migrate()
        names = [self.keys.consent(s) for s in subjects]
        if is_cluster(self.client):  # one MGET per slot, i.e. per subject
            values = await self.client.mget_nonatomic(names)  # type: ignore[attr-defined]
        else:
            values = await self.client.mget(names)
        out = {}
        for subject, raw in zip(subjects, values, strict=True):
            if raw:
                state = decode_state(raw)
                if state:
                    out[subject] = state
        return out

    async def write_many(self, states: Mapping[str, Mapping[str, bool]]) -> None:
        mapping = {self.keys.consent(s): encode_state(st) for s, st in states.items() if st}
        if mapping and is_cluster(self.client):
            await self.client.mset_nonatomic(mapping)  # type: ignore[attr-defined]
        elif mapping:
            await self.client.mset(mapping)  # type: ignore[arg-type]

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.aclose()  # type: ignore[attr-defined]


def cmd_migrate_keys(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune store migrate-keys``: move the Redis keys of older versions to their names."""
    r = cfg.redis

    async def run() -> ConsentMigration:
        client = connect_async(r, socket_timeout=30.0)
        try:
            return await migrate_legacy_consent(client, Keys.from_config(cfg))
        finally:
            await client.aclose()  # type: ignore[attr-defined]

    result = asyncio.run(run())
    new = Keys.from_config(cfg).consent("<subject>")
    print(
        f"consent: {result.moved} key(s) moved from consent:<subject> to {new}, "
        f"{result.superseded} old key(s) deleted because the new one held newer state, "
        f"{result.skipped} left alone (gone meanwhile, or not a string)"
    )
    from attune.online_store import migrate_aggregate_keys
    from attune.redis_connect import connect

    client = connect(r, socket_timeout=30.0)
    try:
        moved = migrate_aggregate_keys(client, Keys.from_config(cfg))
    except ValueError as exc:  # old names on a cluster: they cannot be merged across slots
        print(f"aggregates: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(
        f"aggregates: {moved} key(s) moved to their {{agg}} / {{exp}} names (popular, trending, "
        "item stats, live experiment counts, experiments state and history)"
    )
    return 0

"""Per-user consent state in Redis.

Key scheme: ``consent:{subject}`` is a string holding the JSON object of the flags the user has
explicitly set, e.g. ``{"analytics":false}`` (keys among ``analytics``, ``personalization``,
``marketing``); ``subject`` is the pseudonymized user id (else the pseudonymized anonymous id),
the same value as the Kafka record key. Flags the user never set are absent, so a change of
``privacy.default_consent`` applies to them. Erasing a user deletes the key.

The collector reads the state of every subject of a batch with ONE ``MGET`` (one round trip,
one command: about 4x less CPU than a pipeline of per-user hash reads) and writes back the
subjects whose ``consent_update`` events it accepted with one ``MSET``, only when there are any.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson
import redis.asyncio as aioredis

from attune.collector.ingest import CONSENT_FLAGS
from attune.config import AttuneConfig

KEY_PREFIX = "consent:"


def consent_key(subject: str) -> str:
    return KEY_PREFIX + subject


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
    """Async access to the consent hashes (``redis.asyncio``; never blocks the event loop)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    @classmethod
    def from_config(cls, cfg: AttuneConfig) -> ConsentStore:
        client = aioredis.Redis(
            host=cfg.redis.host,
            port=cfg.redis.port,
            db=cfg.redis.db,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            max_connections=64,
        )
        return cls(client)

    async def read_many(self, subjects: Sequence[str]) -> dict[str, dict[str, bool]]:
        """The stored state of each subject (subjects without any are left out)."""
        if not subjects:
            return {}
        values = await self.client.mget([consent_key(s) for s in subjects])
        out = {}
        for subject, raw in zip(subjects, values, strict=True):
            if raw:
                state = decode_state(raw)
                if state:
                    out[subject] = state
        return out

    async def write_many(self, states: Mapping[str, Mapping[str, bool]]) -> None:
        mapping = {consent_key(s): encode_state(st) for s, st in states.items() if st}
        if mapping:
            await self.client.mset(mapping)  # type: ignore[arg-type]

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.aclose()  # type: ignore[attr-defined]

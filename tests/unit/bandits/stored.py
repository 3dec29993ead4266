"""A bandit state hash as Redis holds it, built from hand-given observations."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from attune.bandits.policies import LinearState, Observation, update_linear
from attune.bandits.store import update_arguments


def linear_hash(arms: Sequence[str], names: Sequence[str], obs: list[Observation]) -> dict:
    """The ``HGETALL`` reply of a LinUCB state holding only ``obs``: what the store's update
    script writes for them on an empty hash (the bytes go through the store's own encoding)."""
    delta = update_linear(LinearState.empty(tuple(arms), tuple(names)), obs)
    args = update_arguments(delta)
    header = orjson.loads(args[0])
    raw: dict[bytes, bytes] = {b"features": orjson.dumps(list(names))}
    blobs = iter(args[1:])
    for arm, n, c, has in header["arms"]:
        raw[f"n:{arm}".encode()] = str(n).encode()
        raw[f"c:{arm}".encode()] = str(c).encode()
        if has:
            raw[f"x:{arm}".encode()] = next(blobs)
    return raw

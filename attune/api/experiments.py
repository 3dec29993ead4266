"""A/B assignment: the same user always lands in the same variant of an experiment.

``assign_variant`` hashes ``"<experiment>:<subject>"`` with SHA-256, reads the first 8 bytes as
a number in [0, 1) and walks the variants' cumulative weights in their configured order. The
subject is the pseudonymized user (or anonymous) id, so no raw id is hashed, assignment needs
no storage, and a different experiment name reshuffles users independently of the last one.
Changing a weight moves only the users between the old and the new boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping


def unit_hash(experiment: str, subject: str) -> float:
    """``"<experiment>:<subject>"`` mapped uniformly into [0, 1)."""
    digest = hashlib.sha256(f"{experiment}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_variant(experiment: str, subject: str, weights: Mapping[str, float]) -> str:
    """The variant of ``subject`` in ``experiment``; ``weights`` are relative shares."""
    total = sum(weights.values())
    if not weights or total <= 0:
        raise ValueError(
            f"experiment {experiment!r} has no variant with a positive weight; "
            "give api.experiment.variants at least one weight > 0"
        )
    point = unit_hash(experiment, subject) * total
    upto = 0.0
    last = ""
    for name, weight in weights.items():
        if weight <= 0:
            continue
        upto += weight
        last = name
        if point < upto:
            return name
    return last  # point == total can only come from rounding: the last positive arm

"""Experiment variants chosen by a bandit, once per user, and kept.

An A/B experiment that declares ``allocation.bandit`` (:class:`attune.experiments.spec.
BanditAllocationSpec`) does not split its users by a hash: the first time a user of the
experiment asks for recommendations, a bandit chooses the variant (Thompson sampling, or LinUCB
over the user's segment: :func:`attune.bandits.slots.decide` over the experiment's variants,
policy ``experiment:<id>``, :func:`policy_name`, state ``P:bandit:{experiment:<id>}``), and
the choice is **stored, not derived**: the bandit's state moves on, so deciding again would
move the user to another variant. A LinUCB decision's context is the user's segment at the
first exposure; the speed layer updates the arm with the user's segment at each list
impression and click (:mod:`attune.bandits.feedback`), which differs only when the nightly
batch has moved the user to another segment meanwhile, as for a content slot. Who is in the
experiment at all stays the pure business of :class:`attune.experiments.assignment.Assigner`
(holdout, layer range, status, targeting).

Per user and experiment the API keeps ``P:u:{u}:exp:<id>``
(:meth:`attune.keys.Keys.user_experiment_variant`, in the user's hash tag, so erasure deletes it
with the rest of the user), a JSON :class:`StoredVariant`: the variant, its propensity, the
decision id and the first exposure (epoch ms). It is read with the bandit's state in the
request's one pipelined read (:meth:`attune.api.store.ApiStore.read_request`); when it is
missing, the API decides and writes it with :data:`REMEMBER_SCRIPT` (set if absent, else return
what is there), so two concurrent first requests of one user agree on the variant the script
returns, and only the request whose write won logs the decision impression: the variant as the
one item with its propensity, ``context.placement = experiment:<id>``, ``recommendation_id`` =
the decision id. The experiment's lists keep recommendation ids ``<id>:<variant>:<token>``;
the speed layer counts their impressions and clicks for the bandit, not the decision
impressions (:mod:`attune.bandits.feedback`).

The key expires with the user TTL (``speed.online_store.user_ttl``) counted from the first
exposure: a user who comes back after that is decided afresh (a new decision impression), which
an off-policy analysis sees as a new decision. A stored variant that is no longer among the
experiment's variants (removed, or its weight set to 0 mid-run) leaves the user with the
defaults, as a hash-split experiment does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from attune.bandits.slots import decide
from attune.config import BanditConfig

POLICY_PREFIX = "experiment:"

# Set the user's variant if none is stored, in one step. KEYS[1]: the user's key; ARGV[1]: the
# JSON value; ARGV[2]: time to live (ms). Returns {1, ARGV[1]} when written, {0, the stored
# value} when another request stored one first.
REMEMBER_SCRIPT = r"""
local old = redis.call('GET', KEYS[1])
if old then return {0, old} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ARGV[1]}
"""


def policy_name(experiment: str) -> str:
    """The bandit policy (Redis hash, decision impression placement) of an experiment."""
    return f"{POLICY_PREFIX}{experiment}"


@dataclass(frozen=True)
class StoredVariant:
    """What is kept per user and experiment (see the module docstring)."""

    variant: str
    propensity: float
    decision_id: str
    first_ms: int

    def encode(self) -> bytes:
        return orjson.dumps(
            {"v": self.variant, "p": self.propensity, "d": self.decision_id, "t": self.first_ms}
        )

    @classmethod
    def decode(cls, raw: bytes | str | None) -> StoredVariant | None:
        """The stored value, or None when there is none (or it cannot be read: decided
        afresh, which the set-if-absent write then leaves alone)."""
        if raw is None:
            return None
        try:
            d = orjson.loads(raw)
            return cls(str(d["v"]), float(d["p"]), str(d["d"]), int(d["t"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


def choose(
    cfg: BanditConfig,
    arms: Sequence[str],
    raw_state: Mapping[Any, Any],
    decision_id: str,
    now_ms: int,
    segment: str | None = None,
) -> StoredVariant:
    """A new decision among ``arms`` (the experiment's variants that take part, in declared
    order) from the bandit's stored state (its ``HGETALL`` reply); ``segment``, the user's
    (batch layer) segment, is the context of a LinUCB policy and ignored by Thompson sampling."""
    d = decide(cfg, arms, raw_state, segment, decision_id)
    return StoredVariant(d.action, d.propensity, decision_id, now_ms)

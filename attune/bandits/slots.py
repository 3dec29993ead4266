"""A content slot's bandit decision: from the slot's configuration, its state and the user.

:func:`slot_arms` says which variants a bandit may choose between for one user (the variants
of the slot's rules that hold, in rule order, each once: the rules stay eligibility filters, so
a ``welcome`` variant meant for new users is never tried on anyone else). :func:`decide` then
runs the configured policy (:class:`attune.config.BanditConfig`) on the state read from Redis
(one ``HGETALL`` reply, :mod:`attune.bandits.store`) and returns a
:class:`attune.bandits.policies.Decision` with its propensity.

A decision is seeded by the configured seed and the decision id (:func:`decision_rng`), so the
same request id and state give the same variant: tests and replays are deterministic, while
different requests draw independently.

The policy key of slot ``s`` is ``slot:<s>`` (:func:`policy_name`); the impression the API
logs for a decision carries the arm as its one item (position 0, with the propensity) and
``context.placement`` = that policy name, which is how the speed layer finds what to count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from attune.bandits.policies import (
    Decision,
    FeatureLayout,
    LinUCBParams,
    ThompsonParams,
    linucb_decide,
    thompson_decide,
)
from attune.bandits.store import decode_beta_state, decode_linear_state
from attune.config import BanditConfig, ContentRule

SLOT_PREFIX = "slot:"


def policy_name(slot: str) -> str:
    """The bandit policy (Redis hash, impression placement) of a content slot."""
    return f"{SLOT_PREFIX}{slot}"


def slot_arms(rules: Sequence[ContentRule], holds: Sequence[bool]) -> tuple[str, ...]:
    """The variants of the rules that hold, in rule order, each once; the last rule's variant
    (the slot's default) when none holds."""
    arms: list[str] = []
    for rule, ok in zip(rules, holds, strict=True):
        if ok and rule.variant not in arms:
            arms.append(rule.variant)
    return tuple(arms) if arms else (rules[-1].variant,)


def layout(cfg: BanditConfig) -> FeatureLayout:
    """The contextual policy's features: bias and the configured segments' one-hots."""
    return FeatureLayout(segments=tuple(cfg.segments))


def decision_rng(cfg: BanditConfig, decision_id: str) -> np.random.Generator:
    """A generator seeded by the configured seed and the decision id (any string)."""
    digest = int.from_bytes(decision_id.encode()[-16:].rjust(16, b"\0"), "big")
    return np.random.default_rng([cfg.seed, digest])


def decide(
    cfg: BanditConfig,
    arms: Sequence[str],
    raw_state: Mapping[Any, Any],
    segment: str | None,
    decision_id: str,
) -> Decision:
    """Choose among ``arms`` with the configured policy and the stored state.

    A single eligible arm is shown with propensity 1 without consulting the policy (there is
    nothing to choose, and nothing to learn about the choice)."""
    arms = tuple(arms)
    if len(arms) == 1:
        return Decision(arms[0], 0, 1.0, arms, (1.0,))
    rng = decision_rng(cfg, decision_id)
    if cfg.policy == "thompson":
        params = ThompsonParams(cfg.prior_alpha, cfg.prior_beta, cfg.epsilon)
        return thompson_decide(decode_beta_state(raw_state, arms), params, rng)
    features = layout(cfg)
    state = decode_linear_state(raw_state, arms, features.names)
    params_ucb = LinUCBParams(cfg.ucb_alpha, cfg.ridge, cfg.epsilon)
    return linucb_decide(state, features.vector(segment), params_ucb, rng)

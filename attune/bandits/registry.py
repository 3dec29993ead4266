"""Every bandit decision point the configuration declares, by policy name.

A policy name is what the API writes in ``context.placement`` of the impression it logs for a
decision and what the app sends back in the click, and it names the Redis state
(:meth:`attune.keys.Keys.bandit`). :func:`bandit_policies` is the one list of them: the speed
layer counts the impressions and clicks of exactly these placements
(:mod:`attune.bandits.feedback`).

=======================  =========================================================
policy name              decision point
=======================  =========================================================
``slot:<slot>``          a content slot (``api.bandits.<slot>``)
``messages``             the messages (``api.message_bandit``; :mod:`attune.bandits.messages`)
``experiment:<id>``      an A/B experiment's variants (``allocation.bandit`` in
                         ``experiments.file``; :mod:`attune.experiments.bandit`)
=======================  =========================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attune.bandits.messages import POLICY as MESSAGES_POLICY
from attune.bandits.slots import policy_name
from attune.experiments.bandit import policy_name as experiment_policy
from attune.experiments.spec import experiments_of

if TYPE_CHECKING:
    from attune.config import AttuneConfig, BanditConfig


def configured_policies(cfg: AttuneConfig) -> dict[str, BanditConfig]:
    """The decision points of the attune configuration itself: content slots and messages."""
    policies = {policy_name(slot): b for slot, b in cfg.api.bandits.items()}
    if cfg.api.message_bandit is not None:
        policies[MESSAGES_POLICY] = cfg.api.message_bandit
    return policies


def experiment_policies(cfg: AttuneConfig) -> dict[str, BanditConfig]:
    """The bandit-allocated experiments of ``experiments.file`` (read now; a broken file raises
    the spec's :class:`attune.config.ConfigError`)."""
    return {
        experiment_policy(exp.id): exp.bandit.bandit_config()
        for exp in experiments_of(cfg).experiments  # no file (experiments.file: null): none
        if exp.bandit is not None
    }


def bandit_policies(cfg: AttuneConfig) -> dict[str, BanditConfig]:
    """Policy name -> its configuration, for every configured decision point."""
    return {**configured_policies(cfg), **experiment_policies(cfg)}

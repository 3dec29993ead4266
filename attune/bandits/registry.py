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
=======================  =========================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attune.bandits.messages import POLICY as MESSAGES_POLICY
from attune.bandits.slots import policy_name

if TYPE_CHECKING:
    from attune.config import AttuneConfig, BanditConfig


def bandit_policies(cfg: AttuneConfig) -> dict[str, BanditConfig]:
    """Policy name -> its configuration, for every configured decision point."""
    policies = {policy_name(slot): b for slot, b in cfg.api.bandits.items()}
    if cfg.api.message_bandit is not None:
        policies[MESSAGES_POLICY] = cfg.api.message_bandit
    return policies

"""The messages' bandit: which one of a user's eligible, uncapped messages to show.

With ``api.message_bandit`` set (:class:`attune.config.BanditConfig`), ``POST /v1/messages``
no longer shows the eligible messages in priority order: the configured policy picks **one**.

Arms. The messages whose targeting holds for the user (:func:`attune.api.targeting.
eligible_messages`, highest priority first) *and* whose frequency cap leaves room in its window
(:func:`message_arms`): a capped message cannot be shown, so offering it to the policy would
give it a propensity it never had. The rules and caps stay eligibility filters, like a content
slot's rules (:mod:`attune.bandits.slots`); ``priority`` then only orders the arms.

One message per decision. The propensity of a decision is the probability the policy had of
showing *that* arm. A slate of several messages drawn one after the other would need the
probability of the whole ordered slate (a product of conditional probabilities over shrinking
arm sets) for off-policy evaluation to divide by, and the clicks of messages shown together
would not be independent rewards of single arms, which is what the Beta and LinUCB states
count. So a bandit shows one message per request: the request's ``max`` then only bounds the
answer to at most 1.

The decision is :func:`attune.bandits.slots.decide` over these arms (the same policies, seeding
by ``decision_id`` and single-arm shortcut as a content slot), with the state of the policy key
``messages`` (:data:`POLICY`, ``P:bandit:{messages}``). The frequency cap is then taken for the
chosen message only. The impression the API logs has the message id as its one item with the
propensity, ``context.placement = "messages"`` and ``recommendation_id`` = the decision id,
like a slot's, which is how the speed layer counts it (:mod:`attune.bandits.registry`).

Counting a cap without taking it. The cap script (:data:`attune.api.store.CAP_SCRIPT`) first
drops showings at or before ``now - window`` and refuses when ``cap`` remain; the showings that
count are those with a time after ``now - window``, so :func:`cap_count_range` gives the
``ZCOUNT`` bounds that count the same ones, read in the request's one round trip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attune.config import MessageConfig

POLICY = "messages"
"""The messages' policy name: its Redis state, and ``context.placement`` of its impressions."""


@dataclass(frozen=True)
class MessageArms:
    """The messages a bandit may choose among (priority order) and the eligible ones left out
    because their cap is reached (priority order)."""

    arms: tuple[MessageConfig, ...]
    capped: tuple[str, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.arms)


def window_ms(message: MessageConfig) -> int:
    """The message's cap window in milliseconds (what the cap script is given)."""
    return int(message.cap_window.total_seconds() * 1000)


def cap_count_range(message: MessageConfig, now_ms: int) -> tuple[str, str]:
    """``ZCOUNT`` bounds over the message's cap key counting the showings the cap script would
    count at ``now_ms``: times strictly after ``now - window``."""
    return f"({now_ms - window_ms(message)}", "+inf"


def message_arms(eligible: Sequence[MessageConfig], shown: Mapping[str, int]) -> MessageArms:
    """Split the eligible messages (priority order) by their cap: ``shown`` is each message's
    showings within its window; a message without an entry has none."""
    arms = tuple(m for m in eligible if shown.get(m.id, 0) < m.cap)
    capped = tuple(m.id for m in eligible if shown.get(m.id, 0) >= m.cap)
    return MessageArms(arms, capped)

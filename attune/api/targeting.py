"""Content slots and targeted messages: rules on the user's segment and live features.

A content slot (``api.content_slots``) is an ordered list of :class:`attune.config.ContentRule`;
:func:`pick_content` returns the first rule whose conditions all hold (segment among
``segments`` when given, affinity to ``genre`` at least ``min_affinity``, number of events
between ``min_events`` and ``max_events``). A slot should end with a rule without conditions,
its default; when none matches the slot answers its last rule's variant.

Messages (``api.messages``) are eligible by the same kind of conditions; among the eligible
ones, highest ``priority`` first (ties: configured order), each is shown only while the user
has seen it fewer than ``cap`` times in the last ``cap_window`` (a counter in Redis,
:meth:`attune.api.store.ApiStore.take_message_slot`, checked and incremented atomically).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attune.config import ContentRule, MessageConfig
from attune.online_store import UserFeatures


@dataclass(frozen=True)
class Profile:
    """What targeting rules look at."""

    segment: str | None
    events: int
    affinities: dict[str, float]

    @classmethod
    def of(cls, features: UserFeatures, segment: str | None) -> Profile:
        return cls(segment, int(features.counters.get("events", 0)), dict(features.affinities))


def _holds(
    profile: Profile,
    segments: Sequence[str],
    genre: str | None,
    min_affinity: float,
    min_events: int,
    max_events: int | None,
) -> bool:
    if segments and profile.segment not in segments:
        return False
    if genre is not None and profile.affinities.get(genre, 0.0) < min_affinity:
        return False
    if profile.events < min_events:
        return False
    return max_events is None or profile.events <= max_events


def rule_holds(rule: ContentRule, profile: Profile) -> bool:
    return _holds(
        profile, rule.segments, rule.genre, rule.min_affinity, rule.min_events, rule.max_events
    )


def pick_content(rules: Sequence[ContentRule], profile: Profile) -> tuple[int, ContentRule]:
    """(index, rule) of the first rule that holds, else of the last rule."""
    for i, rule in enumerate(rules):
        if rule_holds(rule, profile):
            return i, rule
    return len(rules) - 1, rules[-1]


def eligible_messages(messages: Sequence[MessageConfig], profile: Profile) -> list[MessageConfig]:
    """Messages whose targeting holds, highest priority first (stable)."""
    ok = [
        m
        for m in messages
        if _holds(profile, m.segments, m.genre, m.min_affinity, m.min_events, None)
    ]
    return sorted(ok, key=lambda m: -m.priority)

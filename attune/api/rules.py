"""The business rules, re-exported: they live in the core (:mod:`attune.rules`) so that the
offline evaluation (``models/pipeline.py``) applies exactly the rules the API applies."""

from attune.rules import (
    Candidate,
    Categories,
    Exclusions,
    RuleStats,
    apply_rules,
    blocked_by,
    boosted,
    pins_for,
)

__all__ = [
    "Candidate",
    "Categories",
    "Exclusions",
    "RuleStats",
    "apply_rules",
    "blocked_by",
    "boosted",
    "pins_for",
]

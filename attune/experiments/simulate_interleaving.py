"""Simulated users for comparing interleaving with an A/B test (tests, benchmarks, the demo).

The question: how many users does each method need to find the better of two rankers, when
the better one lifts the A/B test's click rate by 5 %?

**The world** (:func:`build_world`). ``queries`` request types, each with a pool of candidate
items of known *attractiveness* (the chance that a user who looks at the item clicks it).
Ranker A orders each pool by attractiveness blurred with a lot of noise; the *improved* ranking
orders it by attractiveness itself. Both show the top ``k``.

**Users** click by the position-based model: at slot ``p`` (0 = top) the item is looked at
with probability ``1 / (p + 1)`` and clicked with probability ``theta * attractiveness``, each
slot independently; ``theta`` is the user's propensity to click, drawn once per user from a
few user types (many light clickers, a few heavy ones). That difference between users is what
an A/B test has to average out and what interleaving cancels (each user compares the two
rankers themselves). Every user has ``impressions_per_user`` impressions, each of a random
request type.

**Ranker B** shows the improved ranking on a share ``improved_share`` of the requests and A's
ranking on the rest (two rankers agree on most requests in practice). The share is calibrated
(:func:`calibrate_improved_share`) so that B's A/B click rate (share of users with at least one
click) is exactly ``1 + lift`` times A's: the click rates have a closed form here
(:func:`ab_click_rates`), so no simulation noise enters the calibration.

**The A/B test** (:func:`ab_power`): half the users get A, half B; a two-sided two-proportion
z-test (pooled variance) on the share of users who clicked; it *detects* B when p < alpha and
B's rate is higher. Each user's "clicked at least once" is an independent Bernoulli draw with
the closed-form rate of their arm, so a simulated experiment is two binomial draws.

**Interleaving** (:func:`interleaving_power`): every user gets team-draft merges of A's and B's
lists (:func:`attune.experiments.interleaving.team_draft_with_coins`, precomputed for every
request type and every sequence of round coins, which are uniform just like the sha256 coins
of :func:`attune.experiments.interleaving.team_draft`); clicks are drawn slot by slot and
credited to the clicked item's team; the users' preferences are tested with
:func:`attune.experiments.interleaving.preference_t_tests`; it *detects* B when p < alpha and
the preference is above 0.5.

:func:`users_for_power` finds, for each method, the number of users at which it detects B in
``power`` of the simulated experiments: doubling, then bisection on a log scale, then a probit
fit of the power curve through every evaluated point (:func:`probit_fit_users`).
:func:`compare_methods` does both and gives their ratio. Everything is vectorized with numpy
and seeded; ``benchmarks/interleaving_vs_ab.py`` runs it and writes the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from attune.experiments.interleaving import (
    outcomes_from_credit,
    preference_t_tests,
    team_draft_with_coins,
    user_shares,
)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class World:
    """Request types, the two rankings of each, and the users (see the module docstring)."""

    attractiveness: FloatArray
    """(queries, pool): click probability of each candidate once looked at, for theta = 1."""
    ranking_a: npt.NDArray[np.int64]
    """(queries, k): ranker A's top k, indices into the pool, best first."""
    ranking_improved: npt.NDArray[np.int64]
    """(queries, k): the improved ranking's top k."""
    theta: FloatArray
    """Propensity to click of each user type."""
    theta_weights: FloatArray
    """Share of users of each type (sums to 1)."""
    impressions_per_user: int = 3
    improved_share: float = 0.0
    """Share of requests on which ranker B shows the improved ranking (else A's)."""
    seed: int = 0
    _tables: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def k(self) -> int:
        return int(self.ranking_a.shape[1])

    @property
    def queries(self) -> int:
        return int(self.ranking_a.shape[0])

    @property
    def examination(self) -> FloatArray:
        return np.asarray(1.0 / (np.arange(self.k) + 1.0), dtype=np.float64)

    def with_share(self, improved_share: float) -> World:
        return replace(self, improved_share=improved_share, _tables=self._tables)


def build_world(
    seed: int = 2008,
    queries: int = 40,
    pool: int = 20,
    k: int = 10,
    noise_a: float = 0.25,
    theta: tuple[float, ...] = (0.1, 0.4, 1.0),
    theta_weights: tuple[float, ...] = (0.5, 0.3, 0.2),
    impressions_per_user: int = 3,
) -> World:
    """A world drawn from ``seed``: attractiveness ~ Beta(1, 4) (mean 0.2) per candidate;
    ranker A sorts by attractiveness + Normal(0, ``noise_a``); the improved ranking sorts by
    attractiveness."""
    if len(theta) != len(theta_weights) or not math.isclose(sum(theta_weights), 1.0):
        raise ValueError("theta and theta_weights need the same length and weights summing to 1")
    if pool < k:
        raise ValueError(f"a pool of {pool} candidates cannot fill {k} slots")
    rng = np.random.default_rng(seed)
    attractiveness = rng.beta(1.0, 4.0, size=(queries, pool))
    noisy = attractiveness + rng.normal(0.0, noise_a, size=(queries, pool))
    ranking_a = np.argsort(-noisy, axis=1, kind="stable")[:, :k]
    ranking_improved = np.argsort(-attractiveness, axis=1, kind="stable")[:, :k]
    return World(
        attractiveness=attractiveness,
        ranking_a=ranking_a.astype(np.int64),
        ranking_improved=ranking_improved.astype(np.int64),
        theta=np.asarray(theta, dtype=np.float64),
        theta_weights=np.asarray(theta_weights, dtype=np.float64),
        impressions_per_user=impressions_per_user,
        seed=seed,
    )


# ----------------------------------------------------------------------------------------
# The A/B side: closed-form click rates


def _no_click(world: World, ranking: npt.NDArray[np.int64]) -> FloatArray:
    """(user types, queries): probability that one impression of ``ranking`` gets no click."""
    alpha = np.take_along_axis(world.attractiveness, ranking, axis=1)  # (queries, k)
    p = world.theta[:, None, None] * world.examination[None, None, :] * alpha[None, :, :]
    return np.prod(1.0 - p, axis=2)


def ab_click_rates(world: World, improved_share: float | None = None) -> tuple[float, float]:
    """The share of users with at least one click under ranker A and under ranker B.

    Per user type: one impression gets no click with probability ``q`` = the mean over request
    types of the product over slots of ``1 - theta * e_p * attractiveness``; ``m`` impressions
    with ``q ** m``; the rate is ``1 - sum(weight * q ** m)`` over user types. B's ``q`` mixes
    A's and the improved ranking's by ``improved_share``.
    """
    share = world.improved_share if improved_share is None else improved_share
    q_a = _no_click(world, world.ranking_a).mean(axis=1)
    q_i = _no_click(world, world.ranking_improved).mean(axis=1)
    q_b = (1.0 - share) * q_a + share * q_i
    m = world.impressions_per_user
    w = world.theta_weights
    return float(1.0 - (w * q_a**m).sum()), float(1.0 - (w * q_b**m).sum())


def calibrate_improved_share(world: World, lift: float = 0.05, tol: float = 1e-12) -> World:
    """``world`` with the ``improved_share`` at which B's click rate is ``1 + lift`` times A's
    (bisection on the closed form; B's rate grows with the share)."""
    p_a, p_full = ab_click_rates(world, 1.0)
    if p_full / p_a < 1.0 + lift:
        raise ValueError(
            f"the improved ranking lifts the click rate by {p_full / p_a - 1:.1%} at most; "
            f"cannot reach {lift:.1%}: build the world with a larger noise_a"
        )
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if ab_click_rates(world, mid)[1] / p_a < 1.0 + lift:
            lo = mid
        else:
            hi = mid
    return world.with_share((lo + hi) / 2)


def simulate_ab_users(
    world: World, users: int, rng: np.random.Generator, ranker: str
) -> npt.NDArray[np.bool_]:
    """Whether each of ``users`` simulated users of ``ranker`` ("a" or "b") clicked at least
    once, drawn slot by slot (checks :func:`ab_click_rates`; the power runs use the closed
    form)."""
    m, k = world.impressions_per_user, world.k
    types = rng.choice(len(world.theta), size=users, p=world.theta_weights)
    q = rng.integers(0, world.queries, size=(users, m))
    if ranker == "b":
        improved = rng.random((users, m)) < world.improved_share
        ranking = np.where(
            improved[..., None], world.ranking_improved[q], world.ranking_a[q]
        )  # (users, m, k)
    else:
        ranking = world.ranking_a[q]
    alpha = world.attractiveness[q[..., None], ranking]
    p = world.theta[types][:, None, None] * world.examination * alpha
    clicks = rng.random((users, m, k)) < p
    return np.asarray(clicks.reshape(users, -1).any(axis=1))


def ab_power(world: World, users: int, sims: int, seed: int, alpha: float = 0.05) -> float:
    """Share of ``sims`` simulated A/B tests of ``users`` users (half per arm) that detect B."""
    from scipy import stats as st

    p_a, p_b = ab_click_rates(world)
    n = users // 2
    if n < 1:
        return 0.0
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, users]))
    x_a = rng.binomial(n, p_a, size=sims)
    x_b = rng.binomial(n, p_b, size=sims)
    pooled = (x_a + x_b) / (2 * n)
    se = np.sqrt(pooled * (1 - pooled) * 2 / n)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (x_b - x_a) / n / se
    p = 2 * st.norm.sf(np.abs(z))
    detected = (p < alpha) & (x_b > x_a)
    return float(detected.mean())


# ----------------------------------------------------------------------------------------
# The interleaving side


def _bits_of(pattern: int) -> Callable[[int], int]:
    """The coins of a pattern: bit ``r`` is the coin of round ``r``."""
    return lambda r: (pattern >> r) & 1


def _interleaved_tables(world: World) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Attractiveness and team (True = B) of every slot of every merged list:
    (2, queries, 2 ** rounds, k), first index 0 when B shows A's ranking, 1 when it shows the
    improved one; third index the round coins (bit r = coin of round r)."""
    cached = world._tables.get("interleaved")
    if cached is not None:
        return cached
    k = world.k
    rounds = (k + 1) // 2
    alpha = np.zeros((2, world.queries, 2**rounds, k))
    team = np.zeros((2, world.queries, 2**rounds, k), dtype=bool)
    for f, ranking_b in enumerate((world.ranking_a, world.ranking_improved)):
        for q in range(world.queries):
            a = [str(i) for i in world.ranking_a[q]]
            b = [str(i) for i in ranking_b[q]]
            for c in range(2**rounds):
                merged = team_draft_with_coins(a, b, k, _bits_of(c))
                if len(merged) != k:  # both rankings have k distinct items: always full
                    raise AssertionError("a merged list is short")
                for slot, (item, t) in enumerate(merged):
                    alpha[f, q, c, slot] = world.attractiveness[q, int(item)]
                    team[f, q, c, slot] = t == "b"
    world._tables["interleaved"] = (alpha, team)
    return alpha, team


def simulate_interleaving_shares(
    world: World, users: int, sims: int, rng: np.random.Generator
) -> FloatArray:
    """(sims, users): each simulated user's preference for B (NaN: no decided impression)."""
    alpha_t, team_t = _interleaved_tables(world)
    m, k = world.impressions_per_user, world.k
    patterns = alpha_t.shape[2]
    shape = (sims, users, m)
    types = rng.choice(len(world.theta), size=(sims, users), p=world.theta_weights)
    theta = world.theta[types][..., None, None]  # (sims, users, 1, 1)
    improved = (rng.random(shape) < world.improved_share).astype(np.int64)
    q = rng.integers(0, world.queries, size=shape)
    c = rng.integers(0, patterns, size=shape)
    alpha = alpha_t[improved, q, c]  # (sims, users, m, k)
    is_b = team_t[improved, q, c]
    clicks = rng.random((*shape, k), dtype=np.float32) < theta * world.examination * alpha
    credit_b = (clicks & is_b).sum(axis=-1)
    credit_a = (clicks & ~is_b).sum(axis=-1)
    outcome = outcomes_from_credit(credit_a, credit_b)  # (sims, users, m)
    return user_shares((outcome < 0).sum(axis=-1), (outcome > 0).sum(axis=-1))


def interleaving_power(
    world: World,
    users: int,
    sims: int,
    seed: int,
    alpha: float = 0.05,
    chunk_cells: int = 4_000_000,
) -> float:
    """Share of ``sims`` simulated interleaving experiments of ``users`` users that detect B
    (or, with ``improved_share`` 0, the false-positive rate: any detection is then wrong)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, users]))
    per_sim = max(1, users * world.impressions_per_user * world.k)
    step = max(1, chunk_cells // per_sim)
    detected = 0
    done = 0
    while done < sims:
        n = min(step, sims - done)
        shares = simulate_interleaving_shares(world, users, n, rng)
        mean, _, _, p, _ = preference_t_tests(shares, alpha)
        detected += int(((p < alpha) & (mean > 0.5)).sum())
        done += n
    return detected / sims


def interleaving_rejections(
    world: World, users: int, sims: int, seed: int, alpha: float = 0.05
) -> float:
    """Share of simulated experiments whose two-sided test rejects "no difference" in either
    direction (the false-positive rate when B equals A)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3, users]))
    shares = simulate_interleaving_shares(world, users, sims, rng)
    _, _, _, p, _ = preference_t_tests(shares, alpha)
    return float((p < alpha).mean())


# ----------------------------------------------------------------------------------------
# Users needed


@dataclass(frozen=True)
class PowerSearch:
    """Where a method reaches the target power."""

    users: float
    """Users at which the power reaches the target: the probit fit over every evaluation."""
    bracket: tuple[int, int]
    """The last number of users evaluated below the target and the last at or above it."""
    evaluations: tuple[tuple[int, float], ...]
    """Every (users, power) evaluated, in order."""


def probit_fit_users(
    evaluations: Sequence[tuple[int, float]], target: float, sims: int
) -> float | None:
    """Users at which the fitted power curve reaches ``target``, or None without enough points.

    A test's power is close to ``Phi(a + b * sqrt(n))`` (the normal approximation, e.g.
    ``b * sqrt(n) - z(1 - alpha / 2)`` for a z-test), so ``Phi^-1(power)`` is fitted as a
    straight line in ``sqrt(n)`` by weighted least squares (weights: the inverse variance of
    ``Phi^-1`` of a share of ``sims`` draws) over the evaluations with a power strictly
    between 0 and 1; every evaluation contributes, so the answer is much less noisy than the
    last two points alone.
    """
    from scipy import stats as st

    pts = [(n, p) for n, p in evaluations if 0.0 < p < 1.0]
    if len({n for n, _ in pts}) < 2:
        return None
    n = np.array([x for x, _ in pts], dtype=np.float64)
    p = np.array([y for _, y in pts])
    z = st.norm.ppf(p)
    weight = sims * st.norm.pdf(z) ** 2 / (p * (1 - p))
    design = np.column_stack([np.ones_like(n), np.sqrt(n)])
    sw = np.sqrt(weight)
    (a, b), *_ = np.linalg.lstsq(design * sw[:, None], z * sw, rcond=None)
    if b <= 0:
        return None
    return float(((st.norm.ppf(target) - a) / b) ** 2)


def users_for_power(
    power_at: Callable[[int], float],
    sims: int,
    target: float = 0.8,
    start: int = 64,
    bisections: int = 4,
    max_users: int = 10_000_000,
) -> PowerSearch:
    """The number of users at which ``power_at`` (a share of ``sims`` simulations) reaches
    ``target``: double from ``start`` until it does, bisect the last doubling ``bisections``
    times on a log scale (so evaluations gather around the answer), then fit the power curve
    through all of them (:func:`probit_fit_users`; linear interpolation inside the last
    bracket if the fit is impossible)."""
    evaluations: list[tuple[int, float]] = []

    def at(n: int) -> float:
        power = power_at(n)
        evaluations.append((n, power))
        return power

    lo, p_lo = 0, 0.0
    hi = start
    p_hi = at(hi)
    while p_hi < target:
        lo, p_lo = hi, p_hi
        hi *= 2
        if hi > max_users:
            raise RuntimeError(f"power stays below {target} up to {max_users:,} users")
        p_hi = at(hi)
    for _ in range(bisections):
        if lo == 0 or hi - lo <= 2:
            break
        mid = round(math.sqrt(lo * hi))
        p_mid = at(mid)
        if p_mid < target:
            lo, p_lo = mid, p_mid
        else:
            hi, p_hi = mid, p_mid
    users = probit_fit_users(evaluations, target, sims)
    if users is None:
        users = (
            float(hi)
            if lo == 0 or p_hi == p_lo
            else lo + (target - p_lo) * (hi - lo) / (p_hi - p_lo)
        )
    return PowerSearch(users, (lo, hi), tuple(evaluations))


@dataclass(frozen=True)
class Comparison:
    """Users each method needs for the target power, and their ratio."""

    lift: float
    improved_share: float
    click_rate_a: float
    click_rate_b: float
    power: float
    alpha: float
    sims: int
    ab_sims: int
    ab: PowerSearch
    interleaving: PowerSearch

    @property
    def ratio(self) -> float:
        """A/B users / interleaving users (how many times fewer users interleaving needs)."""
        return self.ab.users / self.interleaving.users

    def to_json(self) -> dict[str, Any]:
        return {
            "lift": self.lift,
            "improved_share": self.improved_share,
            "click_rate": {"a": self.click_rate_a, "b": self.click_rate_b},
            "power": self.power,
            "alpha": self.alpha,
            "sims_per_point": {"interleaving": self.sims, "ab": self.ab_sims},
            "ab_users": round(self.ab.users),
            "interleaving_users": round(self.interleaving.users),
            "ratio": self.ratio,
            "ab_bracket": list(self.ab.bracket),
            "interleaving_bracket": list(self.interleaving.bracket),
            "ab_evaluations": [list(e) for e in self.ab.evaluations],
            "interleaving_evaluations": [list(e) for e in self.interleaving.evaluations],
        }


def compare_methods(
    world: World | None = None,
    lift: float = 0.05,
    power: float = 0.8,
    alpha: float = 0.05,
    sims: int = 300,
    ab_sims: int = 2000,
    seed: int = 12,
    bisections: int = 4,
) -> Comparison:
    """Calibrate B to ``lift`` and find the users each method needs for ``power``.

    Interleaving runs ``sims`` simulated experiments per number of users; the A/B test, whose
    simulated experiment is two binomial draws, ``ab_sims`` (more, for free).
    """
    world = calibrate_improved_share(world or build_world(), lift)
    p_a, p_b = ab_click_rates(world)
    ab = users_for_power(
        lambda n: ab_power(world, n, ab_sims, seed, alpha),
        ab_sims,
        power,
        start=1024,
        bisections=bisections,
    )
    il = users_for_power(
        lambda n: interleaving_power(world, n, sims, seed, alpha),
        sims,
        power,
        start=64,
        bisections=bisections,
    )
    return Comparison(lift, world.improved_share, p_a, p_b, power, alpha, sims, ab_sims, ab, il)

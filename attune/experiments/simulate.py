"""Simulated A/B experiments at the user level, for the tests of the analysis and the demo.

A simulated experiment is a stream of users arriving day after day; each is assigned to an arm
and then behaves according to a :class:`UserModel`:

* each user has their own click probability per exposure, drawn from a Beta distribution around
  the model's ``ctr`` (``concentration`` sets how alike users are: real users differ a lot, and
  that heterogeneity is why the user, not the impression, is the unit of analysis);
* they see ``1 + Poisson(mean_exposures - 1)`` recommendations and click each with their
  probability (so clicks per user are binomial given the user); a treatment with a true
  relative lift multiplies every user's click probability by ``1 + lift``;
* carts, purchases, revenue, dwell and dismissals follow from clicks and exposures, and the
  pre-experiment covariate (events before the first exposure) from the same propensity, so it
  predicts the metrics the way a user's history does.

A user's outcome is fixed when they arrive (attribution windows are minutes, experiments last
days), so the data of a daily look is simply every user arrived so far.

:func:`simulate_ab` gives per-user :class:`~attune.experiments.verdict.VariantData`, day by day,
for :func:`~attune.experiments.verdict.analyse`; :func:`simulate_looks` gives only the
cumulative sufficient statistics of many experiments at once (vectorized with numpy), which is
what the false-positive and power simulations need.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import integrate, optimize
from scipy import stats as st

from attune.experiments.verdict import VariantData

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class UserModel:
    """How simulated users behave (see the module docstring); rates are per exposure or click."""

    ctr: float = 0.10
    concentration: float = 10.0
    mean_exposures: float = 5.0
    cart_per_click: float = 0.2
    purchase_per_cart: float = 0.3
    mean_order_value: float = 30.0
    mean_dwell_s: float = 40.0
    dismiss_per_exposure: float = 0.02
    mean_pre_events: float = 8.0

    def __post_init__(self) -> None:
        if not 0 < self.ctr < 1 or self.concentration <= 0 or self.mean_exposures < 1:
            raise ValueError("need 0 < ctr < 1, concentration > 0 and mean_exposures >= 1")

    @property
    def beta(self) -> tuple[float, float]:
        """The Beta(a, b) of per-user click probabilities (mean ``ctr``)."""
        return self.ctr * self.concentration, (1 - self.ctr) * self.concentration

    def click_rate(self, multiplier: float = 1.0) -> float:
        """The true share of users with at least one click when every click probability is
        multiplied by ``multiplier``: with ``e = 1 + Poisson(m - 1)`` exposures,
        ``P(no click | p) = (1 - p) exp(-(m - 1) p)``, averaged over the Beta of ``p``."""
        a, b = self.beta
        lam = self.mean_exposures - 1

        def no_click(p: float) -> float:
            q = min(1.0, multiplier * p)
            return (1 - q) * math.exp(-lam * q) * float(st.beta.pdf(p, a, b))

        value, _ = integrate.quad(no_click, 0, 1, limit=200, epsabs=1e-12, epsrel=1e-10)
        return 1 - value

    def multiplier_for_click_rate_lift(self, lift: float) -> float:
        """The multiplier of click probabilities that raises :meth:`click_rate` by ``lift``
        (relative): a lift in the share of clicking users needs a bigger lift per click."""
        target = self.click_rate() * (1 + lift)
        if not 0 < target < 1:
            raise ValueError(f"a click rate lift of {lift} leaves (0, 1)")
        return float(optimize.brentq(lambda m: self.click_rate(m) - target, 1e-6, 1 / self.ctr))


def _users(
    rng: np.random.Generator, model: UserModel, n: int, multiplier: float
) -> dict[str, FloatArray]:
    a, b = model.beta
    p = rng.beta(a, b, size=n)
    exposures = 1 + rng.poisson(model.mean_exposures - 1, size=n)
    clicks = rng.binomial(exposures, np.minimum(1.0, multiplier * p))
    carts = rng.binomial(clicks, model.cart_per_click)
    purchases = rng.binomial(carts, model.purchase_per_cart)
    revenue = purchases * rng.exponential(model.mean_order_value, size=n)
    dwell = clicks * rng.exponential(model.mean_dwell_s, size=n)
    dismissals = rng.binomial(exposures, model.dismiss_per_exposure)
    pre = rng.poisson(model.mean_pre_events * p / model.ctr)
    f = np.float64
    return {
        "exposures": exposures.astype(f),
        "clicks": clicks.astype(f),
        "carts": carts.astype(f),
        "purchases": purchases.astype(f),
        "revenue": revenue.astype(f),
        "dwell_s": dwell.astype(f),
        "dismissals": dismissals.astype(f),
        "pre_period": pre.astype(f),
    }


@dataclass(frozen=True)
class SimulatedAB:
    """One simulated experiment: ``days[k]`` maps each variant to its users arrived by the end
    of day ``k`` (cumulative), ready for :func:`~attune.experiments.verdict.analyse`."""

    days: tuple[Mapping[str, VariantData], ...]


def simulate_ab(
    model: UserModel,
    users_per_day: int,
    days: int,
    weights: Mapping[str, float],
    multipliers: Mapping[str, float] | None = None,
    seed: int = 0,
) -> SimulatedAB:
    """Simulate one experiment: ``users_per_day`` users arrive each day and are assigned at
    random with probabilities ``weights``; the users of variant ``v`` click with their
    probability times ``multipliers[v]`` (default 1: no effect)."""
    rng = np.random.default_rng(seed)
    names = list(weights)
    w = np.array([weights[n] for n in names], dtype=np.float64)
    if w.sum() <= 0 or np.any(w < 0):
        raise ValueError("weights must be >= 0 with a positive sum")
    mult = {n: 1.0 for n in names} | dict(multipliers or {})
    daily: list[dict[str, dict[str, FloatArray]]] = []
    for _ in range(days):
        arm = rng.choice(len(names), size=users_per_day, p=w / w.sum())
        daily.append(
            {n: _users(rng, model, int((arm == i).sum()), mult[n]) for i, n in enumerate(names)}
        )
    out: list[Mapping[str, VariantData]] = []
    for k in range(days):
        cumulative = {}
        for n in names:
            cols = {c: np.concatenate([d[n][c] for d in daily[: k + 1]]) for c in daily[0][n]}
            cumulative[n] = VariantData.from_columns(cols)
        out.append(cumulative)
    return SimulatedAB(tuple(out))


@dataclass(frozen=True, eq=False)
class Looks:
    """Cumulative sufficient statistics of many simulated experiments, one array of shape
    ``(experiments, days, arms)`` per statistic: ``users``, ``clickers`` (users with >= 1
    click), and the per-user sums ``clicks``, ``exposures``, ``clicks_sq``, ``exposures_sq``,
    ``clicks_exposures`` that a delta-method ratio needs."""

    users: NDArray[np.int64]
    clickers: NDArray[np.int64]
    clicks: FloatArray
    exposures: FloatArray
    clicks_sq: FloatArray
    exposures_sq: FloatArray
    clicks_exposures: FloatArray


def simulate_looks(
    model: UserModel,
    experiments: int,
    users_per_day: int,
    days: int,
    multipliers: Sequence[float] = (1.0, 1.0),
    shares: Sequence[float] | None = None,
    split: Literal["random", "fixed"] = "random",
    seed: int = 0,
    chunk_users: int = 2_000_000,
) -> Looks:
    """Simulate ``experiments`` independent experiments at the user level and keep only their
    daily cumulative sufficient statistics (see :class:`Looks`).

    Arm ``i`` gets a share ``shares[i]`` (default equal) of each day's ``users_per_day`` users:
    by a fair draw per user (``random``, as hashing does) or exactly (``fixed``); its users'
    click probabilities are multiplied by ``multipliers[i]``. Experiments are simulated in
    chunks of about ``chunk_users`` users to bound memory.
    """
    arms = len(multipliers)
    share = np.full(arms, 1 / arms) if shares is None else np.asarray(shares, dtype=np.float64)
    if share.size != arms or abs(share.sum() - 1) > 1e-9:
        raise ValueError("shares need one value per arm, summing to 1")
    mult = np.asarray(multipliers, dtype=np.float64)
    rng = np.random.default_rng(seed)
    a, b = model.beta
    per_exp = users_per_day * days
    chunk = max(1, chunk_users // per_exp)
    shape = (experiments, days, arms)
    stats = {k: np.zeros(shape) for k in ("users", "clickers", "c", "e", "c2", "e2", "ce")}
    for start in range(0, experiments, chunk):
        n_exp = min(chunk, experiments - start)
        n = n_exp * per_exp
        # every user's (experiment, day) follows from their position; their arm from the split
        cell = np.arange(n) // users_per_day  # experiment * days + day
        if split == "random":
            arm = rng.choice(arms, size=n, p=share)
        else:
            bounds = np.round(np.cumsum(share) * users_per_day).astype(np.int64)
            arm = np.searchsorted(bounds, np.arange(n) % users_per_day, side="right")
        p = rng.beta(a, b, size=n)
        e = 1 + rng.poisson(model.mean_exposures - 1, size=n)
        c = rng.binomial(e, np.minimum(1.0, mult[arm] * p))
        index = cell * arms + arm
        size = n_exp * days * arms
        ef, cf = e.astype(np.float64), c.astype(np.float64)
        for key, weights in (
            ("users", None),
            ("clickers", (c > 0).astype(np.float64)),
            ("c", cf),
            ("e", ef),
            ("c2", cf * cf),
            ("e2", ef * ef),
            ("ce", cf * ef),
        ):
            sums = np.bincount(index, weights=weights, minlength=size)
            stats[key][start : start + n_exp] = sums.reshape(n_exp, days, arms)
    cum = {k: np.cumsum(v, axis=1) for k, v in stats.items()}
    return Looks(
        users=cum["users"].astype(np.int64),
        clickers=cum["clickers"].astype(np.int64),
        clicks=cum["c"],
        exposures=cum["e"],
        clicks_sq=cum["c2"],
        exposures_sq=cum["e2"],
        clicks_exposures=cum["ce"],
    )

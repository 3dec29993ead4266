"""Team-draft interleaving: two rankers compared inside one list, and how the list is judged.

An A/B test shows each user one ranker's list and compares the two groups of users; most of
what it measures is how much users differ from each other (who clicks at all), so a small
difference between the rankers needs many users. Interleaving shows every user *both* rankers
in one merged list and lets the user's clicks say which ranker's items they preferred: the
comparison happens inside one impression, the user's own propensity to click cancels out, and
far fewer users are needed (``benchmarks/interleaving_vs_ab.py`` measures how many fewer).

**The merge** (:func:`team_draft`; Radlinski, Kurup and Joachims, "How does clickthrough data
reflect retrieval quality?", CIKM 2008). Like two captains picking teams: in each *round* a
fair coin decides which ranker picks first; each ranker in turn adds its highest-ranked item
that is not in the list yet, and the item joins that ranker's *team*. An item both rankers
want is taken once, by the ranker whose turn it is; the other one then picks its next item.
So every prefix of the list holds as many items of one team as of the other, give or take one,
and the position advantage is split fairly. The list ends at ``k`` items, or when a ranker has
nothing new to offer: the paper stops at once; here the round is finished first (the team
behind still picks, if it can), so that both teams end with as many items when possible. Going
on with the other ranker alone would break the balance. The API asks each ranker for at least
``k`` candidates; then the list always has ``k`` items.

**The coins** are derived from a seed (the API passes the recommendation id), so the same
impression is always merged the same way, and anyone can re-derive them (:func:`coin`): the
bits of ``sha256("team-draft:<seed>:<block>")``, least significant bit of each byte first,
256 rounds per block; bit 0 lets the first team (``teams[0]``) pick first in that round.

**The credit rule** (:func:`credit_clicks`, :func:`impression_winner`). A click on an item of
the list credits the item's team; each clicked item counts once however often it was clicked,
and clicks on items that were not in the list are ignored. The impression is *won* by the team
with more credited clicks, a *tie* when both have the same number (one or more), and
*undecided* (left out) when nothing in it was clicked.

**The user-level preference** (:func:`tally_users`, :func:`user_shares`). The user, not the
impression, is the unit: one heavy clicker must not outweigh many light ones, and impressions
of one user are not independent. A user's preference is the share of the user's decided
impressions (won by one team; ties and undecided ones left out) that the second team
(``teams[1]``, "b") won: 1.0 means every impression the user decided went to b, 0.5 no
preference. Users without a decided impression carry no information and are left out.

**The test** (:func:`preference_test`). The estimate is the mean of the users' preferences;
under "no difference" it is 0.5. Its interval and p-value come from a one-sample t-test of the
users' preferences against 0.5 (two-sided). Chosen over the sign test (count users who mostly
preferred b vs a, binomial with p = 0.5) because it keeps how strongly each user preferred one
side (4 of 4 impressions vs 2 of 3) where the sign test keeps only the direction and drops the
users at exactly 0.5, so it is never less powerful on these data; it gives an interval on the
same quantity as the estimate; and the preferences are bounded in [0, 1], so the mean is close
to normal from a few dozen users on (the simulation in
:mod:`attune.experiments.simulate_interleaving` checks its false-positive rate). The sign test
is reported beside it as a check that needs no distributional assumption, and replaces it when
the t-test is undefined (every user at the same preference).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_TEAMS = ("a", "b")
TIE = "tie"
"""What :func:`impression_winner` returns when both teams got the same credit (> 0)."""


# ----------------------------------------------------------------------------------------
# The merge


def coin(seed: int | str, round_index: int) -> int:
    """The coin of round ``round_index`` for ``seed``: 0 = the first team picks first, 1 = the
    second team does.

    Bit ``round_index % 256`` (least significant bit of each byte first) of
    ``sha256("team-draft:<seed>:<round_index // 256>")``: stable across processes, machines and
    languages, unlike Python's ``hash`` or ``random``.
    """
    if round_index < 0:
        raise ValueError(f"round_index must be >= 0, got {round_index}")
    block, bit = divmod(round_index, 256)
    digest = hashlib.sha256(f"team-draft:{seed}:{block}".encode()).digest()
    return (digest[bit // 8] >> (bit % 8)) & 1


def _distinct(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def team_draft_with_coins(
    a: Sequence[str],
    b: Sequence[str],
    k: int,
    coins: Callable[[int], int] | Sequence[int],
    teams: tuple[str, str] = DEFAULT_TEAMS,
) -> list[tuple[str, str]]:
    """:func:`team_draft` with the coin of each round given: ``coins[r]`` (or ``coins(r)``) is
    0 when ``teams[0]`` picks first in round ``r``, 1 when ``teams[1]`` does.

    For simulations that enumerate every coin sequence; the API uses :func:`team_draft`.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if teams[0] == teams[1]:
        raise ValueError(f"the two teams need different names, got {teams[0]!r} twice")
    flip = coins if callable(coins) else coins.__getitem__
    lists = (_distinct(a), _distinct(b))
    next_index = [0, 0]  # the first position of each list not examined yet
    taken: set[str] = set()
    sizes = [0, 0]
    out: list[tuple[str, str]] = []

    def next_new(side: int) -> str | None:
        ranking = lists[side]
        while next_index[side] < len(ranking) and ranking[next_index[side]] in taken:
            next_index[side] += 1
        return ranking[next_index[side]] if next_index[side] < len(ranking) else None

    while len(out) < k:
        if sizes[0] != sizes[1]:
            side = 0 if sizes[0] < sizes[1] else 1  # the team behind picks
        elif next_new(0) is None or next_new(1) is None:
            break  # a new round, and one ranker has nothing new: stop (see the module doc)
        else:
            side = 1 if flip(len(out) // 2) else 0  # a new round: the coin decides
        item = next_new(side)
        if item is None:
            break  # the team behind has nothing new either
        taken.add(item)
        sizes[side] += 1
        out.append((item, teams[side]))
    return out


def team_draft(
    a: Sequence[str],
    b: Sequence[str],
    k: int,
    seed: int | str,
    teams: tuple[str, str] = DEFAULT_TEAMS,
) -> list[tuple[str, str]]:
    """Merge rankings ``a`` and ``b`` (best first) into ``k`` items by team draft.

    Returns ``(item, team)`` pairs, best slot first; the team is ``teams[0]`` for an item
    ``a`` contributed and ``teams[1]`` for one of ``b`` (pass the variant names to log them as
    ``items[].team``). The same ``seed`` always gives the same list (:func:`coin`). Repeated
    items within one ranking count once. See the module docstring for the rules.
    """
    return team_draft_with_coins(a, b, k, lambda r: coin(seed, r), teams)


# ----------------------------------------------------------------------------------------
# The credit rule


def credit_clicks(
    shown: Iterable[tuple[str, str]],
    clicked: Iterable[str],
    teams: tuple[str, str] = DEFAULT_TEAMS,
) -> dict[str, int]:
    """Credited clicks per team of one impression: ``shown`` is the merged list's
    ``(item, team)`` pairs, ``clicked`` the items clicked from it (each counts once; items that
    were not shown are ignored)."""
    team_of = dict(shown)
    unknown = sorted({t for t in team_of.values() if t not in teams})
    if unknown:
        raise ValueError(f"impression has items of team(s) {unknown}; expected {list(teams)}")
    credit = dict.fromkeys(teams, 0)
    for item in set(clicked):
        team = team_of.get(item)
        if team is not None:
            credit[team] += 1
    return credit


def impression_winner(
    shown: Iterable[tuple[str, str]],
    clicked: Iterable[str],
    teams: tuple[str, str] = DEFAULT_TEAMS,
) -> str | None:
    """The team that won the impression, :data:`TIE`, or None when no shown item was clicked."""
    credit = credit_clicks(shown, clicked, teams)
    first, second = credit[teams[0]], credit[teams[1]]
    if first == second:
        return None if first == 0 else TIE
    return teams[0] if first > second else teams[1]


def outcomes_from_credit(
    credit_first: npt.ArrayLike, credit_second: npt.ArrayLike
) -> npt.NDArray[np.int8]:
    """Vectorized winners: +1 where the second team got more credit, -1 where the first did,
    0 for a tie or an undecided impression (neither is counted in a user's preference)."""
    return np.sign(np.asarray(credit_second) - np.asarray(credit_first)).astype(np.int8)


# ----------------------------------------------------------------------------------------
# Per user


@dataclass
class UserTally:
    """One user's impressions of an interleaving experiment, by outcome."""

    impressions: int = 0
    wins_first: int = 0
    wins_second: int = 0
    ties: int = 0

    @property
    def decided(self) -> int:
        return self.wins_first + self.wins_second

    @property
    def preference(self) -> float | None:
        """Share of the decided impressions won by the second team (None: none decided)."""
        return self.wins_second / self.decided if self.decided else None


def tally_users(
    impressions: Iterable[tuple[Hashable, Sequence[tuple[str, str]], Iterable[str]]],
    teams: tuple[str, str] = DEFAULT_TEAMS,
) -> dict[Hashable, UserTally]:
    """Per user, the outcomes of their impressions: ``(user, shown, clicked)`` triples."""
    out: dict[Hashable, UserTally] = {}
    for user, shown, clicked in impressions:
        tally = out.setdefault(user, UserTally())
        tally.impressions += 1
        winner = impression_winner(shown, clicked, teams)
        if winner == teams[0]:
            tally.wins_first += 1
        elif winner == teams[1]:
            tally.wins_second += 1
        elif winner == TIE:
            tally.ties += 1
    return out


def user_shares(wins_first: npt.ArrayLike, wins_second: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Vectorized user preferences: ``wins_second / (wins_first + wins_second)``, NaN for a
    user without a decided impression (left out of the test)."""
    first = np.asarray(wins_first, dtype=np.float64)
    second = np.asarray(wins_second, dtype=np.float64)
    decided = first + second
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(decided > 0, second / decided, np.nan)


# ----------------------------------------------------------------------------------------
# The test


@dataclass(frozen=True)
class PreferenceTest:
    """The test of the users' preferences against 0.5 (no difference between the rankers)."""

    users: int
    """Users with at least one decided impression (the test's sample)."""
    preference: float
    """Mean user preference for the second team: 0.5 = none, > 0.5 = the second is better."""
    ci: tuple[float, float]
    p_value: float
    test: str
    """``t`` (one-sample t-test of the preferences) or ``sign`` when the t-test is undefined."""
    prefer_first: int
    """Users who preferred the first team (preference < 0.5)."""
    prefer_second: int
    sign_p_value: float
    """Two-sided binomial sign test over the users with a preference (p = 0.5)."""


def preference_t_tests(
    shares: npt.ArrayLike, alpha: float = 0.05
) -> tuple[
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.int64],
]:
    """The t-test of :func:`preference_test` along the last axis of ``shares`` (NaN = a user
    without a decided impression), for many experiments at once (simulations).

    Returns ``(mean, ci_low, ci_high, p_value, n)`` per row; NaN where fewer than 2 users, or
    every user at the same preference, make the test undefined.
    """
    from scipy import stats as st  # heavy; only the analysis pays for it (the API never calls it)

    x = np.asarray(shares, dtype=np.float64)
    valid = ~np.isnan(x)
    n = valid.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid, x, 0.0).sum(axis=-1) / n
        dev = np.where(valid, x - mean[..., None], 0.0)
        var = (dev**2).sum(axis=-1) / (n - 1)
        se = np.sqrt(var / n)
        df = np.where(n > 1, n - 1, 1)
        t = (mean - 0.5) / se
        half = st.t.ppf(1 - alpha / 2, df) * se
        p = 2 * st.t.sf(np.abs(t), df)
    undefined = (n < 2) | ~(se > 0)
    mean = np.where(n > 0, mean, np.nan)
    low = np.where(undefined, np.nan, mean - half)
    high = np.where(undefined, np.nan, mean + half)
    p = np.where(undefined, np.nan, p)
    return mean, low, high, p, n


def sign_test(prefer_first: int, prefer_second: int) -> float:
    """Two-sided exact binomial test of ``prefer_second`` successes in ``prefer_first +
    prefer_second`` trials with p = 0.5 (1.0 without trials)."""
    from scipy import stats as st

    trials = prefer_first + prefer_second
    if trials == 0:
        return 1.0
    return float(st.binomtest(prefer_second, trials, 0.5).pvalue)


def preference_test(shares: npt.ArrayLike, alpha: float = 0.05) -> PreferenceTest:
    """Test the users' preferences (:func:`user_shares`; NaN entries are left out) against
    0.5: the mean with its ``1 - alpha`` t-interval, the t-test's p-value and the sign test.

    When the t-test is undefined (fewer than 2 users, or all at the same preference) the
    p-value is the sign test's and the interval is the estimate itself (``[m, m]``) or NaN
    without users.
    """
    x = np.asarray(shares, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    mean, low, high, p, n = preference_t_tests(x, alpha)
    prefer_first = int((x < 0.5).sum())
    prefer_second = int((x > 0.5).sum())
    sign_p = sign_test(prefer_first, prefer_second)
    m = float(mean)
    if math.isnan(float(p)):
        return PreferenceTest(
            users=int(n),
            preference=m,
            ci=(m, m),
            p_value=sign_p if x.size else math.nan,
            test="sign",
            prefer_first=prefer_first,
            prefer_second=prefer_second,
            sign_p_value=sign_p,
        )
    return PreferenceTest(
        users=int(n),
        preference=m,
        ci=(float(low), float(high)),
        p_value=float(p),
        test="t",
        prefer_first=prefer_first,
        prefer_second=prefer_second,
        sign_p_value=sign_p,
    )


# ----------------------------------------------------------------------------------------
# One experiment


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


@dataclass(frozen=True)
class InterleavingResult:
    """An interleaving experiment's outcome: counts, the users' preference and its test."""

    teams: tuple[str, str]
    impressions: int
    users: int
    """Users with at least one impression."""
    wins: dict[str, int]
    """Impressions won, per team."""
    ties: int
    test: PreferenceTest
    alpha: float = 0.05
    undecided: int = field(default=0)
    """Impressions without a credited click."""

    @property
    def significant(self) -> bool:
        return not math.isnan(self.test.p_value) and self.test.p_value < self.alpha

    @property
    def winner(self) -> str | None:
        """The better team when the difference is significant, else None."""
        if not self.significant:
            return None
        return self.teams[1] if self.test.preference > 0.5 else self.teams[0]

    def to_json(self) -> dict[str, Any]:
        """The report's ``interleaving`` object (the dashboard reads it)."""
        t = self.test
        return {
            "rankers": list(self.teams),
            "impressions": self.impressions,
            "users": self.users,
            "decided_users": t.users,
            "wins": dict(self.wins),
            "ties": self.ties,
            "undecided": self.undecided,
            "preference": _finite(t.preference),
            "preference_of": self.teams[1],
            "ci": [_finite(t.ci[0]), _finite(t.ci[1])],
            "p_value": _finite(t.p_value),
            "test": t.test,
            "sign_test": {
                "prefer": {self.teams[0]: t.prefer_first, self.teams[1]: t.prefer_second},
                "p_value": _finite(t.sign_p_value),
            },
            "alpha": self.alpha,
            "significant": self.significant,
            "winner": self.winner,
        }


def analyse_tallies(
    tallies: Mapping[Hashable, UserTally] | Iterable[UserTally],
    teams: tuple[str, str] = DEFAULT_TEAMS,
    alpha: float = 0.05,
) -> InterleavingResult:
    """The experiment's result from its users' tallies (:func:`tally_users`, or counts per user
    computed elsewhere, e.g. by the batch layer)."""
    values = list(tallies.values()) if isinstance(tallies, Mapping) else list(tallies)
    first = np.array([u.wins_first for u in values], dtype=np.int64)
    second = np.array([u.wins_second for u in values], dtype=np.int64)
    impressions = sum(u.impressions for u in values)
    ties = sum(u.ties for u in values)
    return InterleavingResult(
        teams=teams,
        impressions=impressions,
        users=len(values),
        wins={teams[0]: int(first.sum()), teams[1]: int(second.sum())},
        ties=ties,
        test=preference_test(user_shares(first, second), alpha),
        alpha=alpha,
        undecided=impressions - ties - int(first.sum()) - int(second.sum()),
    )


def analyse_impressions(
    impressions: Iterable[tuple[Hashable, Sequence[tuple[str, str]], Iterable[str]]],
    teams: tuple[str, str] = DEFAULT_TEAMS,
    alpha: float = 0.05,
) -> InterleavingResult:
    """The experiment's result from ``(user, shown, clicked)`` triples (see the module doc)."""
    return analyse_tallies(tally_users(impressions, teams), teams, alpha)

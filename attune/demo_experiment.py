"""The demo's experiment: replayed MovieTweetings users meet the real API, simulated users click.

``attune demo`` ends with an A/B test run the way a product team would run one: the declared
experiment (``ranking_v1`` in ``config/experiments.yaml``: ranking on, the control, against
ranking off) is started, real recommendation requests go to the running personalization API,
which assigns each user to an arm, answers and logs the impression with its
``recommendation_id``; simulated users then click, linger and dismiss through the collector,
the nightly batch attributes those outcomes to the impressions, and the experiment report
gives the verdict the dashboard shows.

The simulated user is the only invented part, and it is kept simple and stated here:

* **taste** - a user's affinity to a genre is the share of their MovieTweetings ratings in it
  (the replayed history the models learned from); an item's appeal to the user is the best
  affinity among the item's genres;
* **position bias** - the chance to look at slot ``p`` (0-based) is ``1 / (1 + p) ** 0.7``;
* **click** - ``P(click) = look(p) * (BASE_CLICK + TASTE_CLICK * appeal)``; a click is followed
  by a ``dwell`` of 20 s to 2 h (longer for a better match);
* **dismiss** - a looked-at item not clicked is dismissed with ``P = DISMISS * (1 - appeal)``.

Nothing here knows which arm a user is in: whether ranking helps is what the data decides.
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

BASE_CLICK = 0.01
"""Click chance of a looked-at item of no appeal to the user."""
TASTE_CLICK = 0.45
"""Extra click chance of a looked-at item of full appeal (the user's only genre)."""
DISMISS = 0.03
"""Chance that a looked-at, unclicked item of no appeal is dismissed (less the more appeal)."""
POSITION_DECAY = 0.7


@dataclass(frozen=True)
class Taste:
    """A simulated user's genre affinities (shares of their ratings, summing to 1)."""

    affinity: Mapping[str, float]

    def appeal(self, genres: Iterable[str]) -> float:
        return max((self.affinity.get(g, 0.0) for g in genres), default=0.0)


def tastes(
    ratings: Iterable[tuple[str, str]], genres: Mapping[str, Sequence[str]]
) -> dict[str, Taste]:
    """Per user, the share of their rated items in each genre (an item counts once per genre,
    so a user's shares sum to 1 over their genres' occurrences)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for user, item in ratings:
        counts[user].update(genres.get(item, ()))
    return {
        u: Taste({g: n / sum(c.values()) for g, n in c.items()}) for u, c in counts.items() if c
    }


def look(position: int) -> float:
    """The chance that the user looks at slot ``position`` (0-based)."""
    return 1.0 / (1.0 + position) ** POSITION_DECAY


@dataclass(frozen=True)
class Reaction:
    """What one simulated user did with one list: clicked items (with dwell) and dismissals."""

    clicks: tuple[tuple[str, int], ...] = ()  # (item, dwell_ms)
    dismissed: tuple[str, ...] = ()


def react(items: Sequence[tuple[str, Sequence[str]]], taste: Taste, rng: random.Random) -> Reaction:
    """A simulated user's reaction to a list of ``(item_id, genres)`` in slot order."""
    clicks: list[tuple[str, int]] = []
    dismissed: list[str] = []
    for position, (item, item_genres) in enumerate(items):
        if rng.random() >= look(position):
            continue
        appeal = taste.appeal(item_genres)
        if rng.random() < BASE_CLICK + TASTE_CLICK * appeal:
            dwell_s = 20 + (7200 - 20) * appeal * rng.random()
            clicks.append((item, int(dwell_s * 1000)))
        elif rng.random() < DISMISS * (1.0 - appeal):
            dismissed.append(item)
    return Reaction(tuple(clicks), tuple(dismissed))


def outcome_events(
    user: str, recommendation_id: str, reaction: Reaction, now: datetime, placement: str
) -> list[dict[str, Any]]:
    """The collector events of a reaction: ``rec_click`` + ``dwell`` (its ``dwell_ms``) per
    click, ``dismiss``; timestamped a second or two after ``now`` (inside any attribution
    window; the dwell is reported with its click, not hours later)."""
    out: list[dict[str, Any]] = []
    context = {"placement": placement, "device": "web"}

    def event(kind: str, item: str, seconds: float, **extra: Any) -> dict[str, Any]:
        return {
            "event_id": uuid.uuid4().hex,
            "type": kind,
            "user_id": user,
            "timestamp": (now + timedelta(seconds=seconds)).isoformat(),
            "items": [{"item_id": item}],
            "recommendation_id": recommendation_id,
            "context": context,
            **extra,
        }

    for i, (item, dwell_ms) in enumerate(reaction.clicks):
        out.append(event("rec_click", item, 2 + i))
        # timed with the click: stamped at its end (up to 2 h on) it would be in the future
        out.append(event("dwell", item, 2 + i, dwell_ms=dwell_ms))
    for i, item in enumerate(reaction.dismissed):
        out.append(event("dismiss", item, 1 + i))
    return out


@dataclass
class TrafficSummary:
    """What the simulated traffic did, per variant."""

    requests: int = 0
    failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    events_sent: int = 0
    users: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    impressions: Counter[str] = field(default_factory=Counter)
    clicks: Counter[str] = field(default_factory=Counter)
    dismissals: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def table(self) -> str:
        lines = [f"  {'variant':<14} {'users':>6} {'lists':>6} {'clicks':>7} {'CTR':>7}"]
        for v in sorted(self.impressions):
            ctr = self.clicks[v] / self.impressions[v] if self.impressions[v] else math.nan
            lines.append(
                f"  {v:<14} {len(self.users[v]):>6} {self.impressions[v]:>6} "
                f"{self.clicks[v]:>7} {ctr:>7.3f}"
            )
        return "\n".join(lines)


def run_traffic(
    users: Sequence[str],
    taste_of: Mapping[str, Taste],
    genres: Mapping[str, Sequence[str]],
    *,
    recommend: Callable[[str], dict[str, Any]],
    send: Callable[[list[dict[str, Any]]], None],
    requests_per_user: int = 2,
    workers: int = 4,
    seed: int = 7,
    say: Callable[[str], None] = print,
    placement: str = "home",
) -> TrafficSummary:
    """Each user asks ``requests_per_user`` times (``recommend(user)`` returns the API's
    body) and reacts; outcomes go to ``send``. Progress every 5 s with rate and ETA."""
    summary = TrafficSummary()
    lock = threading.Lock()
    total = len(users) * requests_per_user
    started = time.monotonic()
    last = [started]

    def one(index: int, user: str) -> None:
        rng = random.Random(f"{seed}:{user}")
        for _ in range(requests_per_user):
            try:
                body = recommend(user)
            except Exception as exc:  # counted (the experiment's error_rate sees it), and why
                with lock:
                    summary.requests += 1
                    summary.failed += 1
                    summary.failures[str(exc)[:120]] += 1
                continue
            variant = str(body.get("variant") or "none")
            shown = [(i["item_id"], genres.get(i["item_id"], ())) for i in body["items"]]
            reaction = react(shown, taste_of[user], rng)
            events = outcome_events(
                user, body["recommendation_id"], reaction, datetime.now(UTC), placement
            )
            if events:
                send(events)
            with lock:
                summary.requests += 1
                summary.events_sent += len(events)
                summary.users[variant].add(user)
                summary.impressions[variant] += 1
                summary.clicks[variant] += len(reaction.clicks)
                summary.dismissals[variant] += len(reaction.dismissed)
                now = time.monotonic()
                if now - last[0] >= 5:
                    last[0] = now
                    rate = summary.requests / (now - started)
                    eta = (total - summary.requests) / rate if rate > 0 else math.inf
                    say(
                        f"experiment traffic: {summary.requests:,}/{total:,} requests "
                        f"({rate:,.0f}/s, ETA {eta:.0f} s), {summary.events_sent:,} outcome events"
                    )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(one, i, u) for i, u in enumerate(users)]:
            f.result()
    summary.seconds = time.monotonic() - started
    return summary


# ----------------------------------------------------------------------------------------
# The demo stage: start, traffic, batch, report


DEMO_EXPERIMENTS = "config/experiments-demo.yaml"
"""The declarations the demo runs (``demo_ranking``: ranking on against off)."""
DEMO_EXPERIMENT = "demo_ranking"


def demo_users(ratings: Iterable[tuple[str, str]], n: int) -> list[str]:
    """The ``n`` users with the most ratings (ties: smallest id): those the models know."""
    counts = Counter(user for user, _ in ratings)
    return [u for u, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def _wait_running(http: Any, api_url: str, experiment: str, timeout_s: float) -> None:
    """Until the API's ``/readyz`` lists ``experiment`` as running (it re-reads the state every
    ``experiments.refresh_s``)."""
    from attune.config import ConfigError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = http.get(f"{api_url}/readyz").json()
        if experiment in body.get("experiments", {}).get("running", []):
            return
        time.sleep(1.0)
    raise ConfigError(f"the API did not pick up the running experiment {experiment} in time")


def run_demo_experiment(
    cfg: Any,
    api_url: str,
    *,
    limit: int | None,
    wait_for_topic: Callable[[], Any],
    say: Callable[[str], None],
    users_n: int = 4000,
    requests_per_user: int = 2,
) -> str:
    """Start ``demo_ranking``, send the simulated traffic, build silver and gold for today and
    write the experiment report; returns the verdict line."""
    import argparse

    import httpx

    from attune.api.keys import ensure_read_key
    from attune.collector.process import collector_process
    from attune.config import ConfigError
    from attune.experiments.cli import cmd_start
    from attune.replay import read_catalog, read_ratings, resolve_dataset
    from attune.secrets import ensure_write_key

    if cmd_start(cfg, argparse.Namespace(id=DEMO_EXPERIMENT, force=False)) != 0:
        raise ConfigError(f"could not start {DEMO_EXPERIMENT} (see above)")
    dataset = resolve_dataset(cfg, "movietweetings")
    if dataset.catalog_file is None:
        raise ConfigError("the MovieTweetings catalog (movies.dat) is missing")
    genres = {i["item_id"]: i["genres"] for i in read_catalog(dataset.catalog_file)}
    ratings = [(u, i) for _, u, i, _, _ in read_ratings(dataset.events_file, limit)]
    taste_of = tastes(ratings, genres)
    users = [u for u in demo_users(ratings, users_n * 2) if u in taste_of][:users_n]
    read_key = ensure_read_key(cfg, "demo")
    write_key = ensure_write_key(cfg, "demo")
    log_path = cfg.log_dir / "collector-demo.log"
    with (
        httpx.Client(timeout=30) as http,
        collector_process(cfg, log_path=log_path) as collector_url,
    ):
        _wait_running(http, api_url, DEMO_EXPERIMENT, cfg.experiments.refresh_s * 3 + 10)

        def recommend(user: str) -> dict[str, Any]:
            # like a well-behaved app: a 429 (the key's rate limit) waits its Retry-After
            for _ in range(20):
                r = http.post(
                    f"{api_url}/v1/recommendations",
                    json={
                        "user_id": user,
                        "k": 10,
                        "context": {"placement": "home", "device": "web"},
                    },
                    headers={"X-Read-Key": read_key},
                )
                if r.status_code != 429:
                    break
                time.sleep(min(5.0, float(r.headers.get("Retry-After", "1"))))
            r.raise_for_status()
            return dict(r.json())

        def send(events: list[dict[str, Any]]) -> None:
            r = http.post(
                f"{collector_url}/v1/events", json=events, headers={"X-Write-Key": write_key}
            )
            if r.status_code != 200:
                raise ConfigError(f"the collector answered {r.status_code}: {r.text[:300]}")

        say(
            f"experiment traffic: {len(users):,} MovieTweetings users x {requests_per_user} "
            f"requests to the API; simulated clicks, dwell and dismissals to the collector"
        )
        traffic = run_traffic(
            users,
            taste_of,
            genres,
            recommend=recommend,
            send=send,
            requests_per_user=requests_per_user,
            say=say,
        )
    say(
        f"{traffic.requests:,} requests ({traffic.failed} failed) and "
        f"{traffic.events_sent:,} outcome events in {traffic.seconds:.0f} s; as the simulated "
        f"users saw it:\n{traffic.table()}"
    )
    if traffic.failed:
        why = "; ".join(f"{n} x {reason}" for reason, n in traffic.failures.most_common(3))
        raise ConfigError(f"{traffic.failed} recommendation requests failed: {why}")
    wait_for_topic()  # impressions and outcomes are in bronze
    return _batch_and_report(cfg, say)


def _batch_and_report(cfg: Any, say: Callable[[str], None]) -> str:
    from spark.command import batch_session
    from spark.experiments import format_results, run_report
    from spark.job import run_batch

    today = datetime.now(UTC).date()
    say(f"silver and gold for {today}, the experiment's day (the views and models are as above)")
    # stopped at the end unless a session was active before (the demo test's own)
    with batch_session(cfg, "attune-demo-experiment", console=True) as spark:
        run_batch(cfg, today, ["silver", "gold"], since=today, spark=spark, say=say)
        _, doc, path, _ = run_report(cfg, spark, today, datetime.now(UTC))
    print(format_results(doc), flush=True)
    say(f"report written to {path}; `attune dashboard` shows it")
    entry = next(e for e in doc["experiments"] if e["id"] == DEMO_EXPERIMENT)
    return f"{DEMO_EXPERIMENT}: {entry['verdict']} ({entry.get('reason', '')})"

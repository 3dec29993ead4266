"""Session-based next-item evaluation: given what a session has viewed so far, is the item it
views next in the top k?

This is the task of e-commerce sessions (the OTTO RecSys dataset, recall@20 its headline
metric), unlike the user-level ranking of :mod:`models.evaluate`: a shopper's session is the
only history, and what matters is the next step.

The protocol (``attune models evaluate-sessions``, :func:`run_session_evaluation`):

1. **Load** the OTTO JSONL sessions (``{"session", "events": [{"aid", "ts", "type"}]}``,
   :func:`load_otto`); ``clicks``, ``carts`` and ``orders`` become attune's ``click``,
   ``add_to_cart`` and ``purchase`` events of a user whose id is the session.
2. **Steps**: within a session, an event on the same item as the event just before it is the
   same step (a click followed by a cart of the article is one step), so the next item is never
   the current one (:func:`collapse_repeats`).
3. **Split in time** (:func:`split_sessions`): the events before the cutoff (the time below
   which ``1 - test_fraction`` of the events fall) are the training data; every step at or after
   the cutoff that has at least one step before it in its session is a test case: its
   *prefix* is the session's steps before it (before or after the cutoff: online, the speed
   layer knows the session so far) and its *target* is its item. Models are fitted once, at the
   cutoff, as the nightly batch and the trainer would be.
4. **Rank** the top ``k`` for every prefix, the prefix's last item excluded, and measure
   (:func:`next_item_metrics`) recall@k (the share of cases whose target is in the top k; one
   target per case, so recall equals hit rate) and MRR@k (mean of 1 / rank, 0 when missing),
   over all cases and separately for *repeat* targets (already in the prefix: a shopper going
   back to an article) and *new* ones (not in the prefix: what recommendations must find).

Models: ``popularity`` (training events per item), ``session-cooccurrence`` (the gold
co-occurrence formula ``n_ab / sqrt(n_a n_b)`` over sessions, :mod:`spark.gold`'s rule: a
session's latest ``max_session_items`` distinct items form a basket; neighbours of the prefix's
latest ``seeds`` items summed, popularity fills), ``session-history`` (the prefix's own items,
most recent first, then popularity: the reference any session model must beat on repeats) and
``tfrs-retrieval`` (attune's two-tower model trained on the training events, users being
sessions, queried with the prefix as its recent-item sequence, exactly the query features the
API sends).

The OTTO sample shipped in ``data/otto-sample`` is 20 sessions and 862 events: the figures it
gives are anecdotes that show the protocol runs, not a measurement; run on the full OTTO
``train.jsonl`` (or a larger slice of it) for numbers that mean something.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from attune.config import AttuneConfig
from attune.progress import RateEta
from models.data import DataError

OTTO_EVENT_TYPES: dict[str, str] = {
    "clicks": "click",
    "carts": "add_to_cart",
    "orders": "purchase",
}
"""OTTO event type -> attune event type."""

SESSION_MODELS: tuple[str, ...] = (
    "popularity",
    "session-cooccurrence",
    "session-history",
    "tfrs-retrieval",
)
SAMPLE_CAVEAT = (
    "tiny sample: {sessions} sessions, {events} events, {cases} test cases; the figures are "
    "anecdotal (they show the protocol runs), not a measurement"
)
SMALL_SAMPLE_SESSIONS = 1000
"""Below this many sessions the report and the table carry :data:`SAMPLE_CAVEAT`."""


# ----------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class Sessions:
    """Session events, sorted by time (ties keep file order), one row per event.

    Columns: ``session`` (str), ``item_id`` (str, OTTO's ``aid``), ``ts_ms`` (int64, Unix ms),
    ``type`` (OTTO's ``clicks``/``carts``/``orders``), ``event_type`` (attune's name).
    """

    events: pd.DataFrame
    source: str
    sha256: str

    def describe(self) -> dict[str, Any]:
        ev = self.events
        return {
            "source": self.source,
            "sha256": self.sha256,
            "sessions": int(ev["session"].nunique()),
            "events": len(ev),
            "items": int(ev["item_id"].nunique()),
            "event_types": {str(k): int(v) for k, v in ev["type"].value_counts().items()},
            "min_time": _iso(int(ev["ts_ms"].min())) if len(ev) else "",
            "max_time": _iso(int(ev["ts_ms"].max())) if len(ev) else "",
        }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


MB = 1024 * 1024


def load_otto(
    path: str | Path,
    max_sessions: int | None = None,
    say: Callable[[str], None] | None = None,
) -> Sessions:
    """OTTO sessions from a JSONL file, or from a folder holding ``train.jsonl``.

    ``max_sessions`` parses only the first N lines (the full OTTO file has 12.9M sessions);
    the whole file is still read, for its digest (the data version). ``say``: progress lines
    (megabytes read of the file's size, rate, ETA) every 5 s while it reads.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "train.jsonl"
    if not p.exists():
        raise DataError(
            f"{p} does not exist: pass --data with an OTTO JSONL file or a folder holding "
            "train.jsonl (e.g. data/otto-sample)"
        )
    rows: list[tuple[str, str, int, str]] = []
    digest = hashlib.sha256()
    meter = None
    if say is not None:
        meter = RateEta(f"reading {p.name}", p.stat().st_size / MB, "MB", say=say)
    read = 0
    with p.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            digest.update(raw)
            if meter is not None:
                read += len(raw)
                if number % 10_000 == 0:  # the clock is read per 10,000 lines, not per line
                    meter.set(read / MB)
            if max_sessions is not None and number > max_sessions:
                continue
            if not raw.strip():
                continue
            rows.extend(_parse_session(raw, f"{p}:{number}"))
    if meter is not None:
        meter.set(read / MB)
        meter.finish()
    if not rows:
        raise DataError(f"{p} holds no session events")
    frame = pd.DataFrame(rows, columns=["session", "item_id", "ts_ms", "type"])
    frame["ts_ms"] = frame["ts_ms"].astype("int64")
    frame["event_type"] = frame["type"].map(OTTO_EVENT_TYPES)
    order = np.lexsort((np.arange(len(frame)), frame["ts_ms"].to_numpy()))
    events = frame.iloc[order].reset_index(drop=True)
    return Sessions(events, str(p.absolute()), digest.hexdigest())


def _parse_session(raw: bytes, where: str) -> list[tuple[str, str, int, str]]:
    try:
        record = json.loads(raw)
        session = str(record["session"])
        events = record["events"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f'{where}: not an OTTO session line ({exc}); expected {{"session": 42, "events": '
            '[{"aid": 1, "ts": 1661200010000, "type": "clicks"}, ...]}'
        ) from exc
    out = []
    for event in events:
        try:
            aid, ts, etype = event["aid"], int(event["ts"]), str(event["type"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: event {event!r} lacks aid, ts or type") from exc
        if etype not in OTTO_EVENT_TYPES:
            raise DataError(
                f"{where}: unknown event type {etype!r}: expected one of "
                f"{', '.join(OTTO_EVENT_TYPES)}"
            )
        out.append((session, str(aid), ts, etype))
    return out


def to_interactions(events: pd.DataFrame) -> pd.DataFrame:
    """Session events as the training-data contract (``user_id`` = the session), in the same
    row order (``events`` is already sorted by time, and sorting keeps ties in order)."""
    from models.data import conform_interactions

    raw = pd.DataFrame(
        {
            "user_id": events["session"].to_numpy(dtype=object),
            "item_id": events["item_id"].to_numpy(dtype=object),
            "timestamp": events["ts_ms"].to_numpy(),
            "event_type": events["event_type"].to_numpy(dtype=object),
        }
    )
    return conform_interactions(raw, "sessions")


# ----------------------------------------------------------------------------------------
# Steps, split, cases (pure)


def collapse_repeats(items: Sequence[str]) -> list[int]:
    """Positions in ``items`` that start a step: each item that differs from the one before.

    ``["a", "a", "b", "a"]`` -> ``[0, 2, 3]`` (a click and a cart of ``a`` are one step; going
    back to ``a`` after ``b`` is a new one).
    """
    return [i for i, item in enumerate(items) if i == 0 or item != items[i - 1]]


@dataclass(frozen=True)
class NextItemCase:
    """One test case: the session's steps so far (oldest first) and the item it viewed next."""

    session: str
    prefix: tuple[str, ...]
    target: str
    ts_ms: int
    row: int
    """Row of the target event in :attr:`Sessions.events` (to build its query features)."""

    @property
    def repeat(self) -> bool:
        """The target is already in the prefix (a return to an article)."""
        return self.target in self.prefix


@dataclass(frozen=True)
class SessionSplit:
    cutoff_ms: int
    train: pd.DataFrame
    cases: list[NextItemCase]

    def describe(self) -> dict[str, Any]:
        repeats = sum(c.repeat for c in self.cases)
        return {
            "kind": "temporal",
            "cutoff": _iso(self.cutoff_ms),
            "cutoff_ms": self.cutoff_ms,
            "train_events": len(self.train),
            "train_sessions": int(self.train["session"].nunique()),
            "test_cases": len(self.cases),
            "test_sessions": len({c.session for c in self.cases}),
            "repeat_cases": repeats,
            "new_cases": len(self.cases) - repeats,
        }


def time_cutoff(ts_ms: np.ndarray, test_fraction: float) -> int:
    """The time at or after which ``test_fraction`` of the events fall: the event time at
    position ``floor(n * (1 - test_fraction))`` of the sorted times."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction must be between 0 and 1, not {test_fraction}")
    ordered = np.sort(np.asarray(ts_ms))
    return int(ordered[min(len(ordered) - 1, int(len(ordered) * (1 - test_fraction)))])


def split_sessions(events: pd.DataFrame, test_fraction: float) -> SessionSplit:
    """Training events before the cutoff; a case per step at or after it with a prefix."""
    cutoff = time_cutoff(events["ts_ms"].to_numpy(), test_fraction)
    train = events[events["ts_ms"] < cutoff].reset_index(drop=True)
    cases: list[NextItemCase] = []
    for session, group in events.groupby("session", sort=False):
        items = group["item_id"].tolist()
        times = group["ts_ms"].tolist()
        rows = group.index.tolist()
        steps = collapse_repeats(items)
        for n, pos in enumerate(steps):
            if n == 0 or times[pos] < cutoff:
                continue
            prefix = tuple(items[p] for p in steps[:n])
            cases.append(NextItemCase(str(session), prefix, items[pos], times[pos], rows[pos]))
    cases.sort(key=lambda c: (c.ts_ms, c.row))
    return SessionSplit(cutoff, train, cases)


def next_item_metrics(
    ranked: Sequence[Sequence[str]], cases: Sequence[NextItemCase], k: int
) -> dict[str, Any]:
    """Recall@k and MRR@k of the targets in the ranked lists (one list per case), over all
    cases and over the repeat and new ones (NaN when a group is empty)."""
    if len(ranked) != len(cases):
        raise ValueError(f"{len(ranked)} ranked lists for {len(cases)} cases")
    hits = np.zeros(len(cases))
    rr = np.zeros(len(cases))
    for i, (top, case) in enumerate(zip(ranked, cases, strict=True)):
        top_k = list(top)[:k]
        if case.target in top_k:
            hits[i] = 1.0
            rr[i] = 1.0 / (top_k.index(case.target) + 1)
    repeat = np.array([c.repeat for c in cases], dtype=bool)

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else float("nan")

    return {
        "recall": mean(hits),
        "mrr": mean(rr),
        "recall_new": mean(hits[~repeat]),
        "mrr_new": mean(rr[~repeat]),
        "recall_repeat": mean(hits[repeat]),
        "cases": len(cases),
        "new_cases": int((~repeat).sum()),
        "repeat_cases": int(repeat.sum()),
    }


# ----------------------------------------------------------------------------------------
# Models (pure Python over item ids, except the TFRS one)


class SessionRecommender(Protocol):
    name: str

    def fit(self, train: pd.DataFrame) -> SessionRecommender: ...

    def recommend(self, cases: Sequence[NextItemCase], k: int) -> list[list[str]]:
        """The top ``k`` items per case, best first, the prefix's last item excluded."""
        ...


def _top(scores: dict[str, float], exclude: str, k: int, fill: Sequence[str]) -> list[str]:
    """Best ``k`` of ``scores`` (ties: item id), then ``fill`` in order, ``exclude`` left out."""
    out = [i for i, _ in sorted(scores.items(), key=lambda p: (-p[1], p[0])) if i != exclude][:k]
    seen = set(out)
    for item in fill:
        if len(out) >= k:
            break
        if item != exclude and item not in seen:
            out.append(item)
            seen.add(item)
    return out


@dataclass
class SessionPopularity:
    """The items with the most training events (ties: item id)."""

    name: str = "popularity"
    ranking: list[str] = field(default_factory=list)

    def fit(self, train: pd.DataFrame) -> SessionPopularity:
        counts = Counter(train["item_id"].tolist())
        self.ranking = [i for i, _ in sorted(counts.items(), key=lambda p: (-p[1], p[0]))]
        return self

    def recommend(self, cases: Sequence[NextItemCase], k: int) -> list[list[str]]:
        return [_top({}, c.prefix[-1], k, self.ranking) for c in cases]


def session_baskets(train: pd.DataFrame, max_items: int) -> list[list[str]]:
    """Per session, its latest ``max_items`` distinct items (by each item's latest event), the
    sessions with at least two: the baskets of :func:`spark.gold.item_cooccurrence`."""
    latest = train.groupby(["session", "item_id"], sort=False)["ts_ms"].max().reset_index()
    latest = latest.sort_values(["session", "ts_ms", "item_id"], ascending=[True, False, True])
    baskets = []
    for _, group in latest.groupby("session", sort=True):
        items = group["item_id"].tolist()[:max_items]
        if len(items) >= 2:
            baskets.append(items)
    return baskets


def cooccurrence_neighbours(
    baskets: Sequence[Sequence[str]], min_count: int, top_k: int
) -> dict[str, list[tuple[str, float]]]:
    """Item -> its ``top_k`` neighbours ``(item, n_ab / sqrt(n_a n_b))``, best first (ties: more
    baskets together, then item id); pairs in fewer than ``min_count`` baskets dropped. ``n_a``
    counts the baskets holding ``a``: :func:`models.pipeline.session_cooccurrence`, the NumPy
    twin of the batch's ``gold/item_cooccurrence``, over the given baskets (each of at least
    two items, as :func:`session_baskets` gives them)."""
    from attune.config import CooccurrenceConfig
    from models.pipeline import session_cooccurrence

    vocab = sorted({item for basket in baskets for item in basket})
    if not vocab:
        return {}
    index = {item: n for n, item in enumerate(vocab)}  # sorted ids: ties by index = by id
    keys: list[int] = []
    items: list[int] = []
    for n, basket in enumerate(baskets):
        distinct = list(dict.fromkeys(basket))
        keys += [n] * len(distinct)
        items += [index[i] for i in distinct]
    params = CooccurrenceConfig(
        max_session_items=max(2, *(len(b) for b in baskets)), min_count=min_count, top_k=top_k
    )
    table = session_cooccurrence(
        np.asarray(keys, dtype=np.int64), np.asarray(items, dtype=np.int64), len(vocab), params
    )
    return {
        vocab[a]: [(vocab[b], score) for b, score in table.neighbours(a, top_k)]
        for a in range(len(vocab))
        if table.indptr[a + 1] > table.indptr[a]
    }


@dataclass
class SessionCooccurrence:
    """Neighbours of the prefix's latest ``seeds`` distinct items, scores summed over the seeds,
    then popularity."""

    max_session_items: int
    min_count: int
    top_k: int
    seeds: int
    name: str = "session-cooccurrence"
    neighbours: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    popular: list[str] = field(default_factory=list)

    def fit(self, train: pd.DataFrame) -> SessionCooccurrence:
        baskets = session_baskets(train, self.max_session_items)
        self.neighbours = cooccurrence_neighbours(baskets, self.min_count, self.top_k)
        self.popular = SessionPopularity().fit(train).ranking
        return self

    def recommend(self, cases: Sequence[NextItemCase], k: int) -> list[list[str]]:
        out = []
        for c in cases:
            seeds = list(dict.fromkeys(reversed(c.prefix)))[: self.seeds]
            scores: dict[str, float] = defaultdict(float)
            for seed in seeds:
                for item, score in self.neighbours.get(seed, ()):
                    scores[item] += score
            out.append(_top(scores, c.prefix[-1], k, self.popular))
        return out


@dataclass
class SessionHistory:
    """The prefix's own items, most recent first, then popularity."""

    name: str = "session-history"
    popular: list[str] = field(default_factory=list)

    def fit(self, train: pd.DataFrame) -> SessionHistory:
        self.popular = SessionPopularity().fit(train).ranking
        return self

    def recommend(self, cases: Sequence[NextItemCase], k: int) -> list[list[str]]:
        out = []
        for c in cases:
            own = list(dict.fromkeys(reversed(c.prefix)))
            out.append(_top({}, c.prefix[-1], k, own + self.popular))
        return out


@dataclass
class SessionRetrieval:
    """attune's TFRS retrieval model: trained on the training events (users = sessions, every
    click, cart and order a positive), queried with each prefix as the recent-item sequence.

    The query features of a case are those :func:`models.features.example_query_features`
    gives the target event, i.e. the session's recent items strictly before it, as the API
    reads them from the online store; the catalog is every item of the file (items first seen
    after the cutoff are cold: their ids are unknown to the model)."""

    cfg: AttuneConfig
    sessions: Sessions
    seed: int
    progress: bool = False
    name: str = "tfrs-retrieval"
    trained: Any = None
    _everything: pd.DataFrame | None = None

    def fit(self, train: pd.DataFrame) -> SessionRetrieval:
        from models.data import complete_items
        from models.features import TrainingData
        from models.retrieval import train_retrieval

        everything = to_interactions(self.sessions.events)
        self._everything = everything
        items = complete_items(None, everything)
        data = TrainingData(to_interactions(train), items, 0.0)
        half_life = self.cfg.models.prior_half_life_days or float("inf")
        self.trained = train_retrieval(
            data, self.cfg.models.retrieval, half_life, self.seed, progress=self.progress
        )
        return self

    def recommend(self, cases: Sequence[NextItemCase], k: int) -> list[list[str]]:
        from models.features import example_query_features

        if self._everything is None or self.trained is None:
            raise RuntimeError("fit() first")
        feats = example_query_features(self._everything, self.trained.params.sequence_length)
        rows = np.array([c.row for c in cases], dtype=np.int64)
        query = {name: values[rows] for name, values in feats.items()}
        scores = self.trained.query_matrix(query) @ self.trained.candidate_matrix().T
        catalog = np.asarray(self.trained.space.catalog, dtype=object)
        index = {item: i for i, item in enumerate(catalog)}
        out = []
        for row, case in zip(scores, cases, strict=True):
            last = index.get(case.prefix[-1])
            if last is not None:
                row[last] = -np.inf
            best = np.argsort(-row, kind="stable")[:k]
            out.append([str(catalog[i]) for i in best])
        return out


# ----------------------------------------------------------------------------------------
# The run


def run_session_evaluation(
    cfg: AttuneConfig,
    sessions: Sessions,
    *,
    test_fraction: float = 0.2,
    k: int = 20,
    seed: int | None = None,
    models: Sequence[str] = SESSION_MODELS,
    min_count: int = 1,
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Split ``sessions`` in time, fit ``models`` on the training events, score every case."""
    unknown = [m for m in models if m not in SESSION_MODELS]
    if unknown:
        raise ValueError(
            f"unknown model {unknown[0]!r}: expected some of {', '.join(SESSION_MODELS)}"
        )
    seed = cfg.models.seed if seed is None else seed
    started = time.monotonic()
    split = split_sessions(sessions.events, test_fraction)
    if not split.cases:
        raise ValueError(
            "no test case: no session has a step after the cutoff with a step before it; use a "
            "larger --test-fraction or more sessions"
        )
    data = sessions.describe()
    caveat = None
    if data["sessions"] < SMALL_SAMPLE_SESSIONS:
        caveat = SAMPLE_CAVEAT.format(
            sessions=data["sessions"], events=data["events"], cases=len(split.cases)
        )
        say(f"NOTE: {caveat}")
    desc = split.describe()
    say(
        f"temporal split at {desc['cutoff']}: {desc['train_events']} training events; "
        f"{desc['test_cases']} next-item cases in {desc['test_sessions']} sessions "
        f"({desc['new_cases']} new items, {desc['repeat_cases']} returns to an item)"
    )
    co = cfg.batch.cooccurrence
    builders: dict[str, Callable[[], SessionRecommender]] = {
        "popularity": SessionPopularity,
        "session-cooccurrence": lambda: SessionCooccurrence(
            co.max_session_items, min_count, co.top_k, max(1, cfg.api.candidates.seeds)
        ),
        "session-history": SessionHistory,
        "tfrs-retrieval": lambda: SessionRetrieval(cfg, sessions, seed, progress),
    }
    results: dict[str, dict[str, Any]] = {}
    for name in models:
        model = builders[name]()
        t0 = time.monotonic()
        model.fit(split.train)
        fit_seconds = time.monotonic() - t0
        metrics = next_item_metrics(model.recommend(split.cases, k), split.cases, k)
        metrics["fit_seconds"] = round(fit_seconds, 2)
        results[name] = metrics
        say(
            f"  {name:<22} Recall@{k} {metrics['recall']:.4f}  MRR@{k} {metrics['mrr']:.4f}  "
            f"(fit {fit_seconds:.1f} s)"
        )
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": "next item of a session prefix",
        "data": data,
        "split": {**desc, "test_fraction": test_fraction},
        "k": k,
        "seed": seed,
        "params": {
            "cooccurrence": {
                "max_session_items": co.max_session_items,
                "min_count": min_count,
                "top_k": co.top_k,
                "seeds": max(1, cfg.api.candidates.seeds),
            },
            "retrieval": cfg.models.retrieval.model_dump() if "tfrs-retrieval" in models else None,
        },
        "models": results,
        "caveat": caveat,
        "total_seconds": round(time.monotonic() - started, 2),
    }


def format_session_table(report: dict[str, Any]) -> str:
    """The report's models as a Markdown table, with the caveat of a small sample above it."""
    k = report["k"]
    lines = []
    if report.get("caveat"):
        lines += [f"NOTE: {report['caveat']}", ""]
    lines.append(
        f"| model | Recall@{k} | MRR@{k} | Recall@{k} new items | MRR@{k} new items | "
        f"Recall@{k} returns | fit s |"
    )
    lines.append("|" + "---|" * 7)
    for name, m in report["models"].items():
        lines.append(
            f"| {name} | {m['recall']:.4f} | {m['mrr']:.4f} | {m['recall_new']:.4f} | "
            f"{m['mrr_new']:.4f} | {m['recall_repeat']:.4f} | {m['fit_seconds']:.1f} |"
        )
    s = report["split"]
    lines.append("")
    lines.append(
        f"{report['data']['sessions']} sessions, {report['data']['events']} events; cutoff "
        f"{s['cutoff']}: {s['train_events']} training events, {s['test_cases']} cases in "
        f"{s['test_sessions']} sessions ({s['new_cases']} new items, {s['repeat_cases']} "
        "returns to an item already in the session); the prefix's last item is excluded."
    )
    return "\n".join(lines)


def plot_session_report(report: dict[str, Any], path: Path) -> Path:
    """Bars of Recall@k and MRR@k (all cases and new items) per model, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = report["k"]
    names = list(report["models"])
    series = {
        f"Recall@{k}": "recall",
        f"MRR@{k}": "mrr",
        f"Recall@{k} new": "recall_new",
        f"MRR@{k} new": "mrr_new",
    }
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(names) + 2), 4.5))
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (label, key) in enumerate(series.items()):
        values = [np.nan_to_num(report["models"][n][key]) for n in names]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, names, rotation=15, ha="right")
    ax.set_ylabel("metric value")
    title = f"next item, {report['split']['test_cases']} cases"
    if report.get("caveat"):
        title += f" (tiny sample: {report['data']['sessions']} sessions, anecdotal)"
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cmd_evaluate_sessions(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune models evaluate-sessions``: see the module docstring. Exit 0 done, 2 bad input."""
    from models.evaluate import clean_json

    try:
        sessions = load_otto(
            args.data, args.max_sessions, say=lambda m: print(m, file=sys.stderr, flush=True)
        )
        models = [m.strip() for m in args.models.split(",")] if args.models else SESSION_MODELS
        report = run_session_evaluation(
            cfg,
            sessions,
            test_fraction=args.test_fraction,
            k=args.k,
            seed=args.seed,
            models=models,
            min_count=args.min_count,
            progress=not args.no_progress,
        )
    except (DataError, ValueError) as exc:
        print(f"attune models evaluate-sessions: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_session_table(report))
    out = (
        Path(args.json)
        if args.json
        else cfg.paths.resolve("reports")
        / f"sessions-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    report["plot"] = str(plot)
    out.write_text(json.dumps(clean_json(report), indent=2) + "\n")
    plot_session_report(report, plot)
    print(f"\nreport: {out}\nplot:   {plot}")
    return 0

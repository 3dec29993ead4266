"""``attune replay``: turn a real dataset into events and send them through the collector.

Datasets (files under ``cfg.paths.data_dir``, see its README):

``movietweetings`` (= ``movietweetings-100k``), ``movietweetings-mini``, or a PATH to a ratings file
    Each rating ``user::imdb_id::rating::unix_ts`` (the mini set is the same as CSV with a
    header) becomes an ``item_view`` and a ``rating`` event (rating 0-10) of user ``user`` at
    that time. The catalog next to the ratings (``movies.dat``: ``imdb_id::title (year)::genres``,
    or ``movies.csv``) is published first, straight to the catalog topic, keyed by item id, as
    JSON ``{"item_id", "title", "year", "genres"}``.
``otto`` (= ``otto-sample``)
    OTTO sessions (``train.jsonl``): clicks -> ``item_view``, carts -> ``add_to_cart``,
    orders -> ``purchase`` with ``order_id`` = ``otto-{session}-{ts}`` (the items of a session
    ordered at the same millisecond share it); the session is both the ``anonymous_id``
    (``otto-{session}``) and the ``session_id``.

Events are sent in timestamp order (ties in file order) through ``POST /v1/events`` in batches,
with the :class:`attune.client.Tracker` (which retries 503s). Event ids are uuid5 of the dataset
name, the source row and the event type, so replaying twice produces the same ids (the speed
layer drops the duplicates; ``attune demo`` skips events already in the topic). ``--limit N``
takes the first N rows of the file.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attune.config import AttuneConfig, ConfigError

# Namespace of replayed event ids: uuid5(REPLAY_NAMESPACE, "{dataset}:{row}:{type}").
REPLAY_NAMESPACE = uuid.UUID("6f1c2e0a-3b7d-5e55-9a51-a77e7e5d0001")
OTTO_TYPES = {"clicks": "item_view", "carts": "add_to_cart", "orders": "purchase"}
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


@dataclass(frozen=True)
class Dataset:
    """A replayable dataset: its name (part of every event id) and its files."""

    name: str
    kind: str  # "ratings" or "otto"
    events_file: Path
    catalog_file: Path | None = None


def resolve_dataset(cfg: AttuneConfig, spec: str) -> Dataset:
    data = cfg.paths.data_dir
    known = {
        "movietweetings": ("movietweetings-100k", "ratings.dat", "movies.dat"),
        "movietweetings-100k": ("movietweetings-100k", "ratings.dat", "movies.dat"),
        "movietweetings-mini": ("movietweetings-mini", "ratings.csv", "movies.csv"),
    }
    if spec in known:
        folder, ratings, movies = known[spec]
        path = data / folder / ratings
        if not path.exists():
            raise ConfigError(
                f"{path} not found: set paths.data_dir to the folder holding {folder}/ (now {data})"
            )
        catalog = data / folder / movies
        return Dataset(folder, "ratings", path, catalog if catalog.exists() else None)
    if spec in ("otto", "otto-sample"):
        path = data / "otto-sample" / "train.jsonl"
        if not path.exists():
            raise ConfigError(f"{path} not found: set paths.data_dir (now {data})")
        return Dataset("otto-sample", "otto", path)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"--dataset {spec!r}: not one of movietweetings, movietweetings-mini, otto, "
            "and no such file (a PATH must be a ratings file in MovieTweetings format)"
        )
    beside = next(
        (p for p in (path.parent / "movies.dat", path.parent / "movies.csv") if p.exists()), None
    )
    # Ids of a file dataset are tied to its absolute path: the same file replays the same ids.
    return Dataset(f"file:{path.resolve()}", "ratings", path, beside)


def event_id(dataset: str, row: int, event_type: str) -> str:
    return str(uuid.uuid5(REPLAY_NAMESPACE, f"{dataset}:{row}:{event_type}"))


def _iso(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat()


# ----------------------------------------------------------------------------------------
# Readers


def read_ratings(path: Path, limit: int | None = None) -> list[tuple[int, str, str, float, int]]:
    """``(row, user, item, rating, unix_ts)`` of a ratings file; ``row`` is 1-based.

    Reads ``user::item::rating::ts`` lines, or CSV with the header
    ``user_id,item_id,rating,timestamp``. A malformed line is an error naming the line.
    """
    rows: list[tuple[int, str, str, float, int]] = []
    with path.open(encoding="utf-8") as fh:
        first = fh.readline()
        is_csv = "::" not in first and first.strip().lower().startswith("user_id,")
        if not is_csv:
            fh.seek(0)
        for lineno, line in enumerate(fh, start=2 if is_csv else 1):
            if limit is not None and len(rows) >= limit:
                break
            line = line.strip()
            if not line:
                continue
            parts = line.split(",") if is_csv else line.split("::")
            try:
                if len(parts) != 4:
                    raise ValueError(f"{len(parts)} fields")
                user, item, rating, ts = parts
                value = float(rating)
                if not 0 <= value <= 10:
                    raise ValueError(f"rating {value} is not in 0-10")
                rows.append((len(rows) + 1, user, item, value, int(ts)))
            except ValueError as exc:
                fmt = "user_id,item_id,rating,timestamp" if is_csv else "user::item::rating::ts"
                raise ConfigError(
                    f"{path} line {lineno}: expected {fmt} ({exc}), got {line[:120]!r}"
                ) from None
    return rows


def ratings_events(
    dataset: str, rows: Iterable[tuple[int, str, str, float, int]]
) -> list[dict[str, Any]]:
    """Two events per rating (item_view then rating), sorted by time (ties: file order)."""
    out: list[dict[str, Any]] = []
    for row, user, item, rating, ts in sorted(rows, key=lambda r: (r[4], r[0])):
        when = _iso(ts)
        items = [{"item_id": item}]
        out.append(
            {
                "event_id": event_id(dataset, row, "item_view"),
                "type": "item_view",
                "user_id": user,
                "timestamp": when,
                "items": items,
            }
        )
        out.append(
            {
                "event_id": event_id(dataset, row, "rating"),
                "type": "rating",
                "user_id": user,
                "timestamp": when,
                "items": items,
                "rating": rating,
            }
        )
    return out


def otto_events(
    path: Path, dataset: str, limit: int | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """``(rows, events)`` of an OTTO ``train.jsonl``; one row (and event) per session event."""
    keyed: list[tuple[int, int, dict[str, Any]]] = []
    rows = 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                session = json.loads(line)
                sid = int(session["session"])
                events = session["events"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path} line {lineno}: not an OTTO session ({exc})") from None
            for e in events:
                if limit is not None and rows >= limit:
                    break
                kind = OTTO_TYPES.get(e.get("type"))
                if kind is None:
                    raise ConfigError(
                        f"{path} line {lineno}: unknown OTTO event type {e.get('type')!r} "
                        f"(expected {', '.join(OTTO_TYPES)})"
                    )
                rows += 1
                ts = int(e["ts"])
                event: dict[str, Any] = {
                    "event_id": event_id(dataset, rows, kind),
                    "type": kind,
                    "anonymous_id": f"otto-{sid}",
                    "session_id": str(sid),
                    "timestamp": _iso(ts / 1000),
                    "items": [{"item_id": str(e["aid"])}],
                }
                if kind == "purchase":
                    event["order_id"] = f"otto-{sid}-{ts}"
                keyed.append((ts, rows, event))
            if limit is not None and rows >= limit:
                break
    keyed.sort(key=lambda k: (k[0], k[1]))
    return rows, [e for _, _, e in keyed]


def read_catalog(path: Path) -> list[dict[str, Any]]:
    """Catalog items ``{"item_id", "title", "year", "genres"}`` from movies.dat or movies.csv."""
    items = []
    with path.open(encoding="utf-8") as fh:
        if path.suffix == ".csv":
            for row in csv.DictReader(fh):
                items.append(_movie(row["item_id"], row["title"], row.get("genres") or ""))
        else:
            for lineno, line in enumerate(fh, start=1):
                line = line.rstrip("\n")
                if not line:
                    continue
                # Split on the first and the last '::' so a title containing '::' survives.
                item_id, sep1, rest = line.partition("::")
                title, sep2, genres = rest.rpartition("::")
                if not (sep1 and sep2 and item_id):
                    raise ConfigError(
                        f"{path} line {lineno}: expected imdb_id::title (year)::genres, "
                        f"got {line[:120]!r}"
                    )
                items.append(_movie(item_id, title, genres))
    return items


def _movie(item_id: str, title: str, genres: str) -> dict[str, Any]:
    match = _TITLE_YEAR.match(title)
    return {
        "item_id": item_id,
        "title": match.group("title") if match else title,
        "year": int(match.group("year")) if match else None,
        "genres": [g for g in genres.split("|") if g],
    }


def publish_catalog(cfg: AttuneConfig, items: list[dict[str, Any]]) -> int:
    """Produce the items to the catalog topic (key = item id) and wait for Kafka's ack."""
    import orjson
    from kafka import KafkaProducer

    from attune.ingest.producer import producer_settings

    topic = cfg.kafka.topic("catalog").name
    producer = KafkaProducer(**producer_settings(cfg))
    try:
        futures = [
            producer.send(
                topic,
                key=item["item_id"].encode(),
                value=orjson.dumps(item, option=orjson.OPT_SORT_KEYS),
            )
            for item in items
        ]
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=0)  # raises if any record failed
    finally:
        producer.close(timeout=10)
    return len(items)


# ----------------------------------------------------------------------------------------
# Replay


@dataclass
class ReplaySummary:
    dataset: str
    rows: int
    events: int
    skipped: int
    sent: int
    accepted: int
    dropped: int
    rejected: int
    failed: int
    catalog_items: int
    elapsed_s: float

    @property
    def events_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "events_per_s": round(self.events_per_s, 1)}


def dataset_events(
    cfg: AttuneConfig, spec: str, limit: int | None = None
) -> tuple[Dataset, int, list[dict[str, Any]]]:
    """The dataset, its row count and its events in send order."""
    ds = resolve_dataset(cfg, spec)
    if ds.kind == "otto":
        rows, events = otto_events(ds.events_file, ds.name, limit)
        return ds, rows, events
    ratings = read_ratings(ds.events_file, limit)
    return ds, len(ratings), ratings_events(ds.name, ratings)


def replay(
    cfg: AttuneConfig,
    spec: str,
    *,
    url: str,
    write_key: str,
    rate: float | None = None,
    limit: int | None = None,
    batch_size: int = 500,
    skip_event_ids: set[str] | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> ReplaySummary:
    """Send a dataset through the collector at ``url``; see the module docstring."""
    from tqdm import tqdm

    from attune.client import Tracker

    if rate is not None and rate <= 0:
        raise ConfigError(f"--rate must be positive, got {rate}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    ds, rows, events = dataset_events(cfg, spec, limit)
    total = len(events)
    if skip_event_ids:
        events = [e for e in events if e["event_id"] not in skip_event_ids]
    skipped = total - len(events)
    catalog = 0
    if ds.catalog_file is not None:
        catalog = publish_catalog(cfg, read_catalog(ds.catalog_file))
        say(f"replay: published {catalog:,} catalog items to {cfg.kafka.topic('catalog').name}")
    say(
        f"replay: {ds.name}: {rows:,} rows -> {total:,} events"
        + (f" ({skipped:,} already in the topic, skipped)" if skipped else "")
        + f", to {url}"
        + (f" at {rate:g} events/s" if rate else ", as fast as possible")
    )
    bar = tqdm(
        total=len(events),
        unit="ev",
        desc="replay",
        disable=not progress,
        file=sys.stderr,
        smoothing=0.1,
    )
    tracker = Tracker(
        url,
        write_key,
        batch_size=batch_size,
        flush_interval=0.5,
        max_queue=max(10 * batch_size, 10_000),
        max_retries=30,
        backoff_max=10.0,
        on_batch=lambda n, _body: bar.update(n),
    )
    start = time.monotonic()
    try:
        for i, event in enumerate(events):
            if rate:
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            tracker.track_event(event)
        stats = tracker.close()
    finally:
        bar.close()
    elapsed = time.monotonic() - start
    return ReplaySummary(
        dataset=ds.name,
        rows=rows,
        events=total,
        skipped=skipped,
        sent=stats.sent,
        accepted=stats.accepted,
        dropped=stats.dropped,
        rejected=stats.rejected,
        failed=stats.failed,
        catalog_items=catalog,
        elapsed_s=round(elapsed, 3),
    )


def print_replay_summary(s: ReplaySummary) -> None:
    print(
        f"replay summary: dataset {s.dataset}: {s.rows:,} rows, {s.events:,} events, "
        f"{s.sent:,} sent, {s.accepted:,} accepted, {s.dropped:,} dropped, "
        f"{s.rejected:,} rejected, {s.failed:,} failed"
        + (f", {s.skipped:,} skipped" if s.skipped else "")
        + f"; {s.elapsed_s:.1f} s, {s.events_per_s:,.0f} events/s"
    )


def default_write_key(cfg: AttuneConfig, given: str | None) -> str:
    from attune.secrets import ensure_write_key

    return given or os.environ.get("ATTUNE_WRITE_KEY") or ensure_write_key(cfg, "demo")


def check_collector(url: str) -> None:
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/healthz", timeout=3.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise ConfigError(
            f"no collector answers at {url} ({type(exc).__name__}); start one with "
            "`attune serve collector` or pass --collector-url"
        ) from None


def cmd_replay(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    from attune.supervisor import local_url

    url = args.collector_url or local_url(cfg.collector.host, cfg.collector.port)
    check_collector(url)
    summary = replay(
        cfg,
        args.dataset,
        url=url,
        write_key=default_write_key(cfg, args.write_key),
        rate=None if args.as_fast_as_possible else args.rate,
        limit=args.limit,
        batch_size=args.batch_size,
    )
    print_replay_summary(summary)
    return 0 if summary.failed == 0 and summary.rejected == 0 else 1

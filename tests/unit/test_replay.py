"""Dataset -> events for the replay tool, on small hand-written files and the real datasets."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from attune.config import AttuneConfig, ConfigError, PathsConfig
from attune.replay import (
    dataset_events,
    otto_events,
    ratings_events,
    read_catalog,
    read_ratings,
    resolve_dataset,
)

# The datasets ship in the repository (data/), so they are always there: no skip.
DATA = Path(__file__).resolve().parents[2] / "data"
NAMESPACE = uuid.UUID("6f1c2e0a-3b7d-5e55-9a51-a77e7e5d0001")  # attune.replay's, written out


@pytest.fixture
def data_cfg() -> AttuneConfig:
    return AttuneConfig(paths=PathsConfig(data_dir=DATA))


def test_ratings_file_to_events_in_time_order(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("7::0114369::9::1362067909\n8::0468569::3::1362000000\n")
    rows = read_ratings(path)
    assert rows == [(1, "7", "0114369", 9.0, 1362067909), (2, "8", "0468569", 3.0, 1362000000)]
    events = ratings_events("tiny", rows)
    # Row 2 is older (1362000000 = 2013-02-27T21:20:00Z), so its two events come first.
    assert [(e["type"], e["user_id"]) for e in events] == [
        ("item_view", "8"),
        ("rating", "8"),
        ("item_view", "7"),
        ("rating", "7"),
    ]
    assert events[0]["timestamp"] == "2013-02-27T21:20:00+00:00"
    assert events[1]["rating"] == 3.0 and events[1]["items"] == [{"item_id": "0468569"}]
    assert "rating" not in events[0]
    # Ids: uuid5 of "dataset:row:type" in the replay namespace, so a rerun gives the same ids.
    assert events[1]["event_id"] == str(uuid.uuid5(NAMESPACE, "tiny:2:rating"))
    assert [e["event_id"] for e in ratings_events("tiny", rows)] == [e["event_id"] for e in events]
    assert len({e["event_id"] for e in events}) == 4


def test_csv_ratings_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("user_id,item_id,rating,timestamp\n1,10,7,100\n2,20,8,200\n3,30,9,300\n")
    assert [r[1] for r in read_ratings(path, limit=2)] == ["1", "2"]


def test_malformed_rating_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("1::2::7::100\n1::2::eleven::100\n")
    with pytest.raises(ConfigError, match=r"line 2: expected user::item::rating::ts"):
        read_ratings(path)
    path.write_text("1::2::11::100\n")
    with pytest.raises(ConfigError, match="not in 0-10"):
        read_ratings(path)


def test_catalog_titles_years_and_genres(tmp_path: Path) -> None:
    path = tmp_path / "movies.dat"
    path.write_text(
        "0114369::Se7en (1995)::Crime|Mystery|Thriller\n"
        "0000001::Odd::Title (2001)::\n"  # a title containing '::', no genres
        "0000002::No Year::Drama\n"
    )
    assert read_catalog(path) == [
        {"item_id": "0114369", "title": "Se7en", "year": 1995,
         "genres": ["Crime", "Mystery", "Thriller"]},
        {"item_id": "0000001", "title": "Odd::Title", "year": 2001, "genres": []},
        {"item_id": "0000002", "title": "No Year", "year": None, "genres": ["Drama"]},
    ]  # fmt: skip


def test_otto_sessions_to_events(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"session": 5, "events": [{"aid": 11, "ts": 2000, "type": "clicks"},'
        ' {"aid": 11, "ts": 3000, "type": "carts"}, {"aid": 11, "ts": 4000, "type": "orders"},'
        ' {"aid": 12, "ts": 4000, "type": "orders"}]}\n'
        '{"session": 6, "events": [{"aid": 99, "ts": 1000, "type": "clicks"}]}\n'
    )
    rows, events = otto_events(path, "otto-test")
    assert rows == 5
    # Session 6's click (ts 1000) is the oldest, then session 5 in its order.
    assert [(e["type"], e["anonymous_id"]) for e in events] == [
        ("item_view", "otto-6"),
        ("item_view", "otto-5"),
        ("add_to_cart", "otto-5"),
        ("purchase", "otto-5"),
        ("purchase", "otto-5"),
    ]
    assert events[3]["order_id"] == events[4]["order_id"] == "otto-5-4000"
    assert events[0]["session_id"] == "6" and events[0]["items"] == [{"item_id": "99"}]
    assert events[0]["timestamp"] == "1970-01-01T00:00:01+00:00"
    assert otto_events(path, "otto-test", limit=2)[0] == 2


def test_unknown_dataset_is_a_clear_error(tmp_path: Path) -> None:
    cfg = AttuneConfig(paths=PathsConfig(data_dir=tmp_path))
    with pytest.raises(ConfigError, match="not one of movietweetings"):
        resolve_dataset(cfg, "no-such-thing")
    with pytest.raises(ConfigError, match=r"paths\.data_dir"):
        resolve_dataset(cfg, "movietweetings")


def test_real_datasets_sizes(data_cfg: AttuneConfig) -> None:
    # Sizes from data/README.md and `wc -l` / grep over the files:
    # mini: 5,191 ratings, 99 movies; 100K: 100,000 ratings, 10,506 movies;
    # otto-sample: 862 events = 800 clicks + 52 carts + 10 orders.
    ds, rows, events = dataset_events(data_cfg, "movietweetings-mini")
    assert (rows, len(events)) == (5191, 10382)
    assert ds.catalog_file is not None and len(read_catalog(ds.catalog_file)) == 99
    ds, rows, events = dataset_events(data_cfg, "movietweetings")
    assert (ds.name, rows, len(events)) == ("movietweetings-100k", 100_000, 200_000)
    assert ds.catalog_file is not None and len(read_catalog(ds.catalog_file)) == 10_506
    times = [e["timestamp"] for e in events]
    assert times == sorted(times)
    _, rows, events = dataset_events(data_cfg, "otto")
    assert rows == 862
    kinds = [e["type"] for e in events]
    assert (kinds.count("item_view"), kinds.count("add_to_cart"), kinds.count("purchase")) == (
        800,
        52,
        10,
    )

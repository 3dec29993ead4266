"""Loaders and the training-data contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.data import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    DataError,
    interaction_mask,
    interaction_schema,
    item_schema,
    load_csv,
    load_dataset,
    load_movietweetings,
    parse_column_mapping,
    positive_mask,
)


def test_schemas_are_the_contract() -> None:
    assert interaction_schema().names == list(INTERACTION_COLUMNS)
    assert item_schema().names == list(ITEM_COLUMNS)
    assert str(interaction_schema().field("timestamp").type) == "timestamp[us, tz=UTC]"


def test_movietweetings_format(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text(
        "2::0110912::9::1375657563\n1::0133093::4::1365029107\n", encoding="utf-8"
    )
    (tmp_path / "movies.dat").write_text(
        "0110912::Pulp Fiction (1994)::Crime|Thriller\n0133093::The Matrix (1999)::Action\n",
        encoding="utf-8",
    )
    data = load_movietweetings(tmp_path)
    inter = data.interactions
    # sorted by time: user 1 (1365029107) first; item ids keep their leading zero
    assert inter["user_id"].tolist() == ["1", "2"]
    assert inter["item_id"].tolist() == ["0133093", "0110912"]
    assert inter["rating"].tolist() == [4.0, 9.0]
    assert inter["event_type"].tolist() == ["rating", "rating"]
    assert str(inter["timestamp"].iloc[0]) == "2013-04-03 22:45:07+00:00"
    items = data.items.set_index("item_id")
    assert items.loc["0110912", "genres"] == ("Crime", "Thriller")
    assert int(items.loc["0133093", "year"]) == 1999
    assert data.version.kind == "file"
    assert data.version.version.startswith("sha256:")
    assert data.version.rows == 2


def test_any_csv_through_a_column_mapping(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text(
        "customer;sku;stars;when\n"
        "c1;A-1;5;2024-01-02T10:00:00Z\n"
        "c2;B-2;;2024-01-01T09:00:00+01:00\n"
    )
    (tmp_path / "catalog.csv").write_text(
        "code;name;cats;cost\nA-1;Lamp;home,light;19.5\nC-3;Desk;home;120\n"
    )
    data = load_dataset(
        "csv",
        tmp_path / "events.csv",
        tmp_path / "catalog.csv",
        columns="user=customer,item=sku,rating=stars,timestamp=when",
        item_columns="item=code,title=name,genres=cats,price=cost",
        sep=";",
        genre_sep=",",
    )
    inter = data.interactions
    # ISO times with zones, sorted: c2 at 08:00Z on Jan 1 comes first
    assert inter["user_id"].tolist() == ["c2", "c1"]
    assert np.isnan(inter["rating"].iloc[0])
    # no rating -> an implicit interaction (item_view); with a rating -> a rating event
    assert inter["event_type"].tolist() == ["item_view", "rating"]
    items = data.items.set_index("item_id")
    # catalog items plus the interacted item the catalog lacks (B-2, empty content)
    assert sorted(items.index) == ["A-1", "B-2", "C-3"]
    assert items.loc["A-1", "genres"] == ("home", "light")
    assert items.loc["C-3", "price"] == 120.0
    assert items.loc["B-2", "genres"] == ()


def test_mapping_errors_say_how_to_fix(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("u,i,t\n1,2,3\n")
    with pytest.raises(DataError, match="unknown column mapping key 'usr'"):
        parse_column_mapping("usr=u", {"user": "user_id"})
    with pytest.raises(DataError, match="mapped column 'customer' is not in the file"):
        load_csv(tmp_path / "e.csv", columns={"user_id": "customer"})
    with pytest.raises(DataError, match="no user_id, item_id, timestamp column"):
        load_csv(tmp_path / "e.csv")
    (tmp_path / "r.csv").write_text("user_id,item_id,rating,timestamp\n1,2,great,3\n")
    with pytest.raises(DataError, match="rating 'great' is not a number"):
        load_csv(tmp_path / "r.csv")
    with pytest.raises(DataError, match="does not exist"):
        load_csv(tmp_path / "nope.csv")


def test_positives_and_interactions() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["u", "u", "u", "u", "v", "v"],
            "item_id": ["a", "b", "c", "c", "d", "e"],
            "rating": [8.0, 6.0, np.nan, 3.0, np.nan, np.nan],
            "event_type": ["rating", "rating", "item_view", "rating", "purchase", "impression"],
        }
    )
    # a: 8 >= 7; b: 6 < 7; c viewed but rated 3 -> the rating decides, neither row positive;
    # d: purchase without rating -> positive; e: impression -> never
    assert positive_mask(df, 7.0).tolist() == [True, False, False, False, True, False]
    assert interaction_mask(df).tolist() == [True, True, True, True, True, False]


def test_mini_fixture_matches_its_readme(mini_dir: Path) -> None:
    # README: 5,191 ratings, 196 users, 99 movies
    data = load_csv(mini_dir / "ratings.csv", mini_dir / "movies.csv")
    assert len(data.interactions) == 5191
    assert data.interactions["user_id"].nunique() == 196
    assert len(data.catalog) == 99
    assert data.head(100).version.rows == 100

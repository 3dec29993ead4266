"""Catalog-topic records -> item metadata (no services)."""

from __future__ import annotations

import pytest

from speed_layer.catalog import parse_catalog_record


def test_record_as_the_replay_publishes_it() -> None:
    value = b'{"genres":["Drama","","Comedy"],"item_id":"0114369","title":"Se7en","year":1995}'
    assert parse_catalog_record(b"0114369", value) == (
        "0114369",
        {"item_id": "0114369", "title": "Se7en", "year": 1995, "genres": ["Drama", "Comedy"]},
    )


def test_item_id_from_the_key_and_tombstones() -> None:
    assert parse_catalog_record(b"m9", b'{"title": "No id"}')[0] == "m9"
    assert parse_catalog_record(b"m9", None) == ("m9", None)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (b"m1", b"{oops", "not valid JSON"),
        (b"m1", b"[1]", "expected a JSON object, got list"),
        (None, b'{"title": "x"}', "no item_id"),
        (b"m1", b'{"genres": "Drama"}', "genres must be a list of strings"),
        (None, None, "tombstone without a key"),
    ],
)
def test_malformed_records_say_what_is_wrong(
    key: bytes | None, value: bytes | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_catalog_record(key, value)

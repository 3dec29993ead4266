"""The models' item table: title tokens by the shared rule, the one gold/items follows."""

from __future__ import annotations

import pandas as pd

from models.data import complete_items, conform_items
from models.encoders import FeatureSpace
from models.features import TrainingData
from tests.unit.models.conftest import frame
from tests.unit.titles import TRICKY_TITLES


def test_the_item_table_holds_each_titles_tokens_in_order() -> None:
    ids = [f"i{n:02d}" for n in range(len(TRICKY_TITLES))]
    items = conform_items(
        pd.DataFrame({"item_id": ids, "title": [t for t, _ in TRICKY_TITLES]}), "test items"
    )
    inter = frame([("u1", item, 8.0, n) for n, item in enumerate(ids)])
    data = TrainingData(inter, complete_items(items, inter), 7.0)

    space = FeatureSpace.build(data, half_life_days=30.0, title_length=16, min_token_count=1)

    # row 0 of the table is the unknown item; token id 0 is "no token", id k is vocabulary k - 1
    vocab = list(space.title_vocab)
    got = {
        item: [vocab[t - 1] for t in space.item_title[row] if t > 0]
        for row, item in enumerate(space.catalog, start=1)
    }
    assert got == {item: tokens for item, (_, tokens) in zip(ids, TRICKY_TITLES, strict=True)}

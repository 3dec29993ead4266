"""The speed layer's new-item vectors: the model server request and which version answers."""

from __future__ import annotations

from speed_layer.catalog import content_inputs, served_version


def test_content_inputs_and_the_served_version() -> None:
    records = [
        {"item_id": "m1", "title": "One", "year": 1999, "genres": ["Drama", "Comedy"]},
        {"item_id": "m2", "title": None, "year": "n/a", "genres": []},
    ]
    assert content_inputs(records) == {
        "item_ids": ["m1", "m2"],
        "genres": [["Drama", "Comedy"], ["", ""]],
        "title": ["One", ""],
        "year": [1999, 0],
    }
    status = {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE"},
            {"version": "3", "state": "LOADING"},
            {"version": "1", "state": "AVAILABLE"},
        ]
    }
    assert served_version(status) == "2"
    assert served_version({"model_version_status": []}) is None

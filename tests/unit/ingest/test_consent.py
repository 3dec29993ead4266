"""The consent state's Redis encoding (the store itself: integration tests)."""

from __future__ import annotations

from attune.ingest.consent import decode_state, encode_state


def test_encoding_is_compact_sorted_json_of_explicit_flags() -> None:
    assert encode_state({"marketing": True, "analytics": False}) == (
        b'{"analytics":false,"marketing":true}'
    )
    assert encode_state({"analytics": False, "colour": True}) == b'{"analytics":false}'


def test_decoding_ignores_what_it_does_not_understand() -> None:
    assert decode_state(b'{"analytics":false,"marketing":true}') == {
        "analytics": False,
        "marketing": True,
    }
    assert decode_state(None) == {}
    assert decode_state(b"not json") == {}
    assert decode_state(b"[1, 2]") == {}
    assert decode_state(b'{"analytics":"no","personalization":true,"x":false}') == {
        "personalization": True
    }

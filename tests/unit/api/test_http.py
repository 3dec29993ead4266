"""HTTP details of the API that need no services: ETags, Server-Timing, request validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from attune.api.app import (
    FeedbackIn,
    RecommendationsIn,
    etag_matches,
    etag_of,
    server_timing,
)


def test_etag_is_a_quoted_body_hash() -> None:
    # `printf '{}' | sha256sum` starts with 44136fa355b3678a1146ad16f7e8649e
    assert etag_of(b"{}") == '"44136fa355b3678a1146ad16f7e8649e"'


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (None, False),
        ('"abc"', True),
        ('W/"abc"', True),  # weak comparison, as RFC 9110 asks for If-None-Match
        ('"x", "abc"', True),
        ("*", True),
        ('"abd"', False),
    ],
)
def test_if_none_match(header: str | None, match: bool) -> None:
    assert etag_matches(header, '"abc"') is match


def test_server_timing_in_milliseconds() -> None:
    assert server_timing({"features": 0.0004, "total": 0.0051}) == (
        "features;dur=0.400, total;dur=5.100"
    )


def test_requests_need_an_id_and_known_fields() -> None:
    with pytest.raises(ValidationError, match=r"user_id .* or anonymous_id"):
        RecommendationsIn.model_validate({"k": 3})
    with pytest.raises(ValidationError, match="extra"):
        RecommendationsIn.model_validate({"user_id": "u", "kk": 3})
    ok = RecommendationsIn.model_validate({"anonymous_id": "v", "filters": {"categories": ["A"]}})
    assert ok.filters.categories == ["A"] and ok.k is None
    with pytest.raises(ValidationError, match="dismiss"):
        FeedbackIn.model_validate({"user_id": "u", "action": "like", "items": ["i"]})
    with pytest.raises(ValidationError, match="at least 1"):
        FeedbackIn.model_validate({"user_id": "u", "action": "dismiss", "items": []})

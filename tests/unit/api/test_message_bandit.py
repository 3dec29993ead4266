"""``POST /v1/messages`` with ``api.message_bandit``: one message chosen by the policy among the
eligible, uncapped ones, its cap taken, its impression logged with the propensity (fakes for
Redis and Kafka; the real services: tests/integration/api/test_api.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.requests import Request

from attune.api.app import Api
from attune.config import ApiConfig, AttuneConfig, BanditConfig, MessageConfig, PathsConfig
from attune.online_store import UserFeatures
from tests.unit.api.test_feedback import FakeSink

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
NOW_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z
DAY_MS = 86_400_000

MESSAGES = [
    MessageConfig(id="rate_more", text="Rate more.", cap=1),
    MessageConfig(id="come_back", text="Come back.", priority=1, cap=2),
    MessageConfig(id="new_feature", text="New!", priority=2, segments=["active"], cap=1),
]
# come_back 500 clicks of 1,000 impressions, the others 10 of 1,000: Beta(501, 501) against
# Beta(11, 991) never overlap, so Thompson sampling's P(come_back best) = 1
STATE = {b"n:come_back": b"1000", b"c:come_back": b"500"} | {
    f"{k}:{m}".encode(): v
    for m in ("rate_more", "new_feature")
    for k, v in (("n", b"1000"), ("c", b"10"))
}


class FakeStore:
    """Stands in for ApiStore: a segment, a bandit state and showings per message; remembers
    what was read and which caps were taken."""

    def __init__(self, segment: str | None, shown: Mapping[str, int]) -> None:
        self.segment = segment
        self.shown = dict(shown)
        self.state: dict[Any, Any] = dict(STATE)
        self.reads: list[tuple[str, str, list[tuple[str, str, str]]]] = []
        self.taken: list[tuple[str, int, int, int]] = []
        self.refuse = False  # a concurrent request took the last showing

    async def read_features(self, subject: str) -> tuple[UserFeatures, str | None]:
        return UserFeatures(subject), self.segment

    async def read_features_bandit_and_caps(
        self, subject: str, policy: str, caps: Sequence[tuple[str, str, str]]
    ) -> tuple[UserFeatures, str | None, dict[Any, Any], dict[str, int]]:
        self.reads.append((subject, policy, list(caps)))
        counts = {m: self.shown.get(m, 0) for m, _, _ in caps}
        return UserFeatures(subject), self.segment, self.state, counts

    async def take_message_slot(
        self, subject: str, message_id: str, now_ms: int, window_ms: int, cap: int, showing: str
    ) -> bool:
        if self.refuse or self.shown.get(message_id, 0) >= cap:
            return False
        self.shown[message_id] = self.shown.get(message_id, 0) + 1
        self.taken.append((message_id, now_ms, window_ms, cap))
        return True


def make_api(
    tmp_path: Path, bandit: BanditConfig | None, store: FakeStore
) -> tuple[Api, list[dict[str, Any]]]:
    cfg = AttuneConfig(
        paths=PathsConfig(var_dir=tmp_path / "var"),
        api=ApiConfig(messages=MESSAGES, message_bandit=bandit),
    )
    api = Api(cfg, sink=FakeSink(), clock=NOW.timestamp)  # type: ignore[arg-type]
    api.store = store  # type: ignore[assignment]
    logged: list[dict[str, Any]] = []
    api.sender.log_impression = logged.append  # type: ignore[method-assign,assignment]
    return api, logged


def post(api: Api, body: Mapping[str, Any]) -> dict[str, Any]:
    data = orjson.dumps(body)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": data, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/messages", "headers": []}
    response = asyncio.run(api.messages(Request(scope, receive)))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "private, no-store"
    return dict(orjson.loads(response.body))


def test_the_policy_shows_one_uncapped_message_with_its_propensity(tmp_path: Path) -> None:
    # active user: all three are eligible; rate_more was shown once today (cap 1): capped.
    # Arms (priority order): new_feature, come_back. Floor 0.2 over 2 arms: come_back 0.2 / 2 +
    # 0.8 * 1 = 0.9, new_feature 0.1 (by hand).
    store = FakeStore("active", {"rate_more": 1})
    api, logged = make_api(tmp_path, BanditConfig(epsilon=0.2), store)
    answers = [post(api, {"user_id": "u-1", "max": 3, "context": {"page": "home"}})]
    # forget the first showing, so the second request has the same two arms whichever the
    # first drew (new_feature, cap 1, would otherwise be capped after being drawn, p = 0.1)
    store.shown = {"rate_more": 1}
    answers.append(post(api, {"user_id": "u-1"}))
    for a in answers:
        assert a["policy"] == "thompson"
        assert a["arms"] == pytest.approx({"new_feature": 0.1, "come_back": 0.9}, abs=1e-6)
        assert list(a["arms"]) == ["new_feature", "come_back"]
        (shown,) = a["messages"]  # one, whatever max asks
        assert a["propensity"] == pytest.approx(a["arms"][shown["id"]])
        assert shown["text"] == {"new_feature": "New!", "come_back": "Come back."}[shown["id"]]
    # the ZCOUNT ranges read: each configured message's window before now (1 day by default)
    subject = api.pseudonymize("u-1")
    window = f"({NOW_MS - DAY_MS}"
    assert store.reads[0] == (
        subject,
        "messages",
        [(m, window, "+inf") for m in ("rate_more", "come_back", "new_feature")],
    )
    # the cap was taken for the chosen message only, once per answer
    assert [t[0] for t in store.taken] == [a["messages"][0]["id"] for a in answers]
    assert all(
        t[1:] == (NOW_MS, DAY_MS, {"come_back": 2, "new_feature": 1}[t[0]]) for t in store.taken
    )
    # one impression per answer: the message as the one item with its propensity
    assert len(logged) == 2 and answers[0]["decision_id"] != answers[1]["decision_id"]
    for imp, a in zip(logged, answers, strict=True):
        assert imp["type"] == "impression" and imp["user_id"] == "u-1"
        assert imp["recommendation_id"] == a["decision_id"]
        assert imp["items"] == [
            {"item_id": a["messages"][0]["id"], "position": 0, "propensity": a["propensity"]}
        ]
        assert imp["context"]["placement"] == "messages"
        assert imp["timestamp"] == "2024-05-01T12:00:00.000Z"
    assert logged[0]["context"]["page"] == "home"


def test_a_certain_choice_and_the_caps_that_follow(tmp_path: Path) -> None:
    # no floor: come_back is best with probability 1 (propensity 1 - about 1e-300), shown until
    # its cap of 2 is reached; then new_feature is the only arm (propensity 1, no policy run);
    # then everything is capped
    store = FakeStore("active", {"rate_more": 1})
    api, logged = make_api(tmp_path, BanditConfig(epsilon=0.0), store)
    first, second, third, fourth = (post(api, {"user_id": "u-2"}) for _ in range(4))
    for a in (first, second):
        assert a["messages"] == [{"id": "come_back", "text": "Come back."}]
        assert a["propensity"] == pytest.approx(1.0, abs=1e-9)
        assert a["capped"] == ["rate_more"]
    assert third["messages"] == [{"id": "new_feature", "text": "New!"}]
    assert (third["propensity"], third["arms"]) == (1.0, {"new_feature": 1.0})
    assert third["capped"] == ["come_back", "rate_more"]
    assert fourth == {
        "messages": [],
        "capped": ["new_feature", "come_back", "rate_more"],
        "decision_id": None,
        "policy": "thompson",
        "propensity": None,
        "arms": {},
    }
    assert [i["items"][0]["item_id"] for i in logged] == ["come_back", "come_back", "new_feature"]


def test_targeting_still_filters_the_arms(tmp_path: Path) -> None:
    # segment at_risk: new_feature (active only) is no arm; uniform without data (epsilon 0:
    # Beta(1, 1) against Beta(1, 1), 1/2 each)
    store = FakeStore("at_risk", {})
    store.state = {}
    api, _ = make_api(tmp_path, BanditConfig(epsilon=0.0), store)
    a = post(api, {"anonymous_id": "v-1"})
    assert a["arms"] == pytest.approx({"come_back": 0.5, "rate_more": 0.5}, abs=1e-4)


def test_a_cap_taken_concurrently_shows_and_logs_nothing(tmp_path: Path) -> None:
    store = FakeStore("active", {})
    store.refuse = True
    api, logged = make_api(tmp_path, BanditConfig(epsilon=0.0), store)
    a = post(api, {"user_id": "u-3"})
    # come_back was chosen for sure, then refused by the cap script
    assert a["messages"] == [] and a["capped"] == ["come_back"]
    assert a["decision_id"] is None and a["propensity"] is None and logged == []


def test_impressions_off_logs_nothing(tmp_path: Path) -> None:
    store = FakeStore("active", {})
    api, logged = make_api(tmp_path, BanditConfig(), store)
    api.cfg = api.cfg.model_copy(
        update={"api": api.cfg.api.model_copy(update={"impressions": False})}
    )
    assert len(post(api, {"user_id": "u-4"})["messages"]) == 1 and logged == []


def test_without_the_bandit_the_endpoint_is_unchanged(tmp_path: Path) -> None:
    # priority order up to max, each cap taken; no decision fields, no impression
    store = FakeStore("active", {"rate_more": 1})
    api, logged = make_api(tmp_path, None, store)
    a = post(api, {"user_id": "u-5", "max": 3})
    assert a == {
        "messages": [
            {"id": "new_feature", "text": "New!"},
            {"id": "come_back", "text": "Come back."},
        ],
        "capped": ["rate_more"],
    }
    assert store.reads == [] and logged == []
    assert post(api, {"user_id": "u-5", "max": 1}) == {
        "messages": [{"id": "come_back", "text": "Come back."}],
        "capped": ["new_feature"],
    }


def test_the_cap_window_reaches_back_by_each_messages_own_window(tmp_path: Path) -> None:
    messages = [MessageConfig(id="weekly", text="w", cap_window=timedelta(days=7))]
    cfg = AttuneConfig(
        paths=PathsConfig(var_dir=tmp_path / "var"),
        api=ApiConfig(messages=messages, message_bandit=BanditConfig()),
    )
    store = FakeStore(None, {})
    api = Api(cfg, sink=FakeSink(), clock=NOW.timestamp)  # type: ignore[arg-type]
    api.store = store  # type: ignore[assignment]
    api.sender.log_impression = lambda event: None  # type: ignore[method-assign]
    assert post(api, {"user_id": "u-6"})["messages"] == [{"id": "weekly", "text": "w"}]
    assert store.reads[0][2] == [("weekly", f"({NOW_MS - 7 * DAY_MS}", "+inf")]
    assert store.taken == [("weekly", NOW_MS, 7 * DAY_MS, 1)]

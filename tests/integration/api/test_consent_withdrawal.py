"""Consent withdrawal takes effect on the user's next request, end to end: the app posts a
``consent_update`` to the real collector, and the very next recommendation request to the real
API is no longer personalized; granting consent again brings personalization back.

The collector writes the consent state to Redis before it acknowledges the event, and the API
reads it on every request (``attune.api.store.ApiStore.read_request``): nothing waits for the
speed layer or the batch layer. The user's only personal source here is their precomputed
(batch view) list, so "personalized" is ``source == "batch"`` with exactly that list.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from attune.api.keys import create_read_key
from attune.api.process import start_api
from attune.collector.process import collector_process
from attune.config import AttuneConfig, free_port
from attune.keys import Keys
from attune.secrets import create_write_key
from attune.stack import create_topics
from tests.integration.speed_layer.helpers import (
    delete_prefix,
    delete_topics,
    pseudo,
    redis_client,
    speed_config,
    write_secret,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

RUN = uuid.uuid4().hex[:8]
USER = f"dana-{RUN}"
# the user's precomputed list, best first
BATCH: dict[str | bytes, float] = {"b1": 3.0, "b2": 2.0, "b3": 1.0}


@pytest.fixture
def test_cfg(cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory) -> AttuneConfig:
    base = speed_config(
        cfg, suffix=f"consent-{RUN}", var_dir=tmp_path_factory.mktemp("consent"), redis_db=13
    )
    # No model server: the batch view is the user's personal source (REST needs no TensorFlow).
    model_server = base.api.model_server.model_copy(
        update={"protocol": "rest", "rest_url": f"http://127.0.0.1:{free_port()}"}
    )
    api = base.api.model_copy(update={"port": free_port(), "model_server": model_server})
    collector = base.collector.model_copy(update={"port": free_port()})
    return AttuneConfig.model_validate(
        base.model_copy(update={"api": api, "collector": collector}).model_dump()
    )


def consent(personalization: bool) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "type": "consent_update",
        "user_id": USER,
        "timestamp": datetime.now(UTC).isoformat(),
        "consent": {"personalization": personalization},
    }


def test_withdrawal_applies_to_the_next_request(test_cfg: AttuneConfig) -> None:
    secret = write_secret(test_cfg)
    write_key = create_write_key(test_cfg, "it-consent")
    read_key = create_read_key(test_cfg, "consent")
    create_topics(test_cfg)
    keys = Keys.from_config(test_cfg)
    r = redis_client(test_cfg)
    r.zadd(keys.user_recs(pseudo(secret, USER)), BATCH)
    try:
        with collector_process(test_cfg) as collector:
            api = start_api(test_cfg)
            try:
                with httpx.Client(timeout=30) as http:

                    def recommend() -> dict[str, Any]:
                        a = http.post(
                            f"{api.url}/v1/recommendations",
                            json={"user_id": USER, "k": 3},
                            headers={"X-Read-Key": read_key},
                        )
                        assert a.status_code == 200, a.text
                        return a.json()

                    def post(event: dict[str, Any]) -> None:
                        e = http.post(
                            f"{collector}/v1/events",
                            json=event,
                            headers={"X-Write-Key": write_key},
                        )
                        assert e.status_code == 200 and e.json()["accepted"] == 1, e.text

                    before = recommend()
                    assert before["source"] == "batch"
                    assert [i["item_id"] for i in before["items"]] == list(BATCH)

                    post(consent(False))
                    after = recommend()  # the very next request, no wait
                    assert after["source"] != "batch", after
                    assert not {i["item_id"] for i in after["items"]} & set(BATCH), after

                    post(consent(True))
                    again = recommend()
                    assert again["source"] == "batch"
                    assert [i["item_id"] for i in again["items"]] == list(BATCH)
            finally:
                api.stop()
    finally:
        delete_prefix(r, keys.prefix)
        r.close()
        delete_topics(test_cfg)

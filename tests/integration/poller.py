"""Asks the API for recommendations in a background thread while a fault test breaks something,
keeping every answer (time, status, body, Retry-After) for the test to assert on."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when the answer arrived
    status: int
    body: dict[str, Any]  # the JSON body ({"text": ...} when it was not JSON)
    retry_after: str | None

    @property
    def source(self) -> str | None:
        return self.body.get("source") if self.status == 200 else None

    @property
    def degraded(self) -> str | None:
        return self.body.get("degraded") if self.status == 200 else None

    @property
    def items(self) -> list[str]:
        return [i["item_id"] for i in self.body.get("items", [])] if self.status == 200 else []


class Poller:
    """POSTs ``body`` to ``/v1/recommendations`` every ``interval_s`` until the ``with`` block
    ends."""

    def __init__(
        self, url: str, read_key: str, body: dict[str, Any], interval_s: float = 0.1
    ) -> None:
        self.url = url
        self.read_key = read_key
        self.body = body
        self.interval_s = interval_s
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-poller", daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def since(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.at >= t]

    def _run(self) -> None:
        headers = {"X-Read-Key": self.read_key}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as http:
            while not self._stop.is_set():
                r = http.post("/v1/recommendations", json=self.body)
                try:
                    body = r.json()
                except ValueError:  # not JSON: keep the text for the failure message
                    body = {"text": r.text}
                self.answers.append(
                    Answer(time.monotonic(), r.status_code, body, r.headers.get("retry-after"))
                )
                self._stop.wait(self.interval_s)

"""Prometheus metrics of the model server.

Served on the REST port at ``/monitoring/prometheus/metrics`` (the path TF Serving's
``prometheus_config`` uses by default) and at ``/metrics``. Each server gets its own registry, so
tests can run several servers in one process.

* ``attune_serving_requests_total{api, method, model, version, signature, code}``: requests
  by API (``rest``, ``grpc``), method (``predict``, ``metadata``, ``status``), the model version
  that answered (empty when none did) and the canonical status code (``OK``, ``NOT_FOUND``, ...);
* ``attune_serving_request_seconds{api, method, model, version, signature}``: latency;
* ``attune_serving_model_events_total{model, event}``: ``loaded``, ``load_failed``,
  ``unloaded``; ``attune_serving_model_load_seconds{model}``: load (and warm-up) time;
* ``attune_serving_available_versions{model}``: versions currently serving;
* ``attune_serving_batch_requests`` / ``attune_serving_batch_rows{model, signature}``: requests
  and rows per batch run by the batching queue.

Model names come only from the configuration: requests for unknown models count under
``model="-"``, so a client cannot create label values.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN_MODEL = "-"


class ServingMetrics:
    def __init__(self, available_versions: Callable[[], dict[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "attune_serving_requests",
            "Model server requests by API, method, model version, signature and status code.",
            ["api", "method", "model", "version", "signature", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "attune_serving_request_seconds",
            "Time from a request's arrival to its answer, by API, method and model version.",
            ["api", "method", "model", "version", "signature"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_events = Counter(
            "attune_serving_model_events",
            "Model version lifecycle events: loaded, load_failed, unloaded.",
            ["model", "event"],
            registry=self.registry,
        )
        self.load_seconds = Histogram(
            "attune_serving_model_load_seconds",
            "Time to load a model version (restore and warm-up) before it takes traffic.",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        self.available = Gauge(
            "attune_serving_available_versions",
            "Versions of a model currently serving.",
            ["model"],
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "attune_serving_batch_requests",
            "Requests merged into one batch by the batching queue.",
            ["model", "signature"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "attune_serving_batch_rows",
            "Rows (examples) in one batch run by the batching queue.",
            ["model", "signature"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._available_versions = available_versions

    def observe(
        self,
        api: str,
        method: str,
        model: str,
        version: int | None,
        signature: str,
        code: str,
        seconds: float,
    ) -> None:
        v = "" if version is None else str(version)
        self.requests.labels(api, method, model, v, signature, code).inc()
        self.latency.labels(api, method, model, v, signature).observe(seconds)

    def model_event(self, model: str, event: str, version: int, seconds: float) -> None:
        self.model_events.labels(model, event).inc()
        if event == "loaded":
            self.load_seconds.labels(model).observe(seconds)

    def batch(self, model: str, signature: str, requests: int, rows: int) -> None:
        self.batch_requests.labels(model, signature).observe(requests)
        self.batch_rows.labels(model, signature).observe(rows)

    def render(self) -> bytes:
        if self._available_versions is not None:
            current = self._available_versions()
            self.available.clear()  # models no longer configured disappear
            for model, n in current.items():
                self.available.labels(model).set(n)
        return generate_latest(self.registry)

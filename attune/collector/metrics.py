"""Prometheus metrics of the collector, served at ``GET /metrics``.

Each app gets its own registry (tests start several apps in one process). Counters are
incremented once per request and label set, not once per event, to keep the hot path cheap.

With several worker processes (``collector.workers``), ``attune serve collector`` sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start; prometheus-client then keeps every
value in files there and :meth:`CollectorMetrics.render` sums all workers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CollectorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "attune_collector_events",
            "Events received, by type, source and outcome (accepted, dropped, rejected).",
            ["type", "source", "outcome"],
            registry=self.registry,
        )
        self.requests = Counter(
            "attune_collector_requests",
            "HTTP requests to POST /v1/events by status code.",
            ["status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "attune_collector_request_seconds",
            "Time from request start to response for POST /v1/events.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.kafka_errors = Counter(
            "attune_collector_kafka_errors",
            "Kafka problems seen by the collector, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.kafka_up = Gauge(
            "attune_collector_kafka_reachable",
            "1 when the Kafka bootstrap servers accept connections (all workers agree).",
            registry=self.registry,
            multiprocess_mode="livemin",
        )

    def count_events(self, source: str, outcome: str, by_type: Mapping[str, int]) -> None:
        for event_type, n in by_type.items():
            if n:
                self.events.labels(event_type, source, outcome).inc(n)

    def kafka_error(self, kind: str) -> None:
        self.kafka_errors.labels(kind).inc()

    def render(self) -> bytes:
        directory = os.environ.get(METRICS_DIR_ENV)
        if directory:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)
            return generate_latest(registry)
        return generate_latest(self.registry)

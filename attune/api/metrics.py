"""Prometheus metrics of the personalization API, served at ``GET /metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class ApiMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "attune_api_requests",
            "Requests by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "attune_api_request_seconds",
            "Request latency by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stages = Histogram(
            "attune_api_stage_seconds",
            "Time per recommendation stage (features, retrieval, candidates, ranking, rules).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sources = Counter(
            "attune_api_recommendations",
            "Recommendation responses by the source that answered and the variant.",
            ["source", "variant"],
            registry=r,
        )
        self.variant_latency = Histogram(
            "attune_api_variant_seconds",
            "Recommendation time (features to rules) by experiment and variant, for the "
            "api_latency_p99_ms guardrail (none/default: no experiment; holdout/holdout).",
            ["experiment", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.variant_requests = Counter(
            "attune_api_variant_requests",
            "Recommendation requests by experiment, variant and outcome (ok, degraded: a model "
            "call failed and a fallback answered, error: the request failed); the error_rate "
            "guardrail is error / all.",
            ["experiment", "variant", "outcome"],
            registry=r,
        )
        self.model_calls = Counter(
            "attune_api_model_calls",
            "Model server calls by model and outcome.",
            ["model", "outcome"],
            registry=r,
        )
        self.breaker = Gauge(
            "attune_api_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            ["dependency"],
            registry=r,
        )
        self.impressions = Counter(
            "attune_api_impressions",
            "Impression events by outcome (sent, dropped, no_consent).",
            ["outcome"],
            registry=r,
        )
        self.rate_limited = Counter(
            "attune_api_rate_limited",
            "Requests refused with 429, by key name.",
            ["key"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

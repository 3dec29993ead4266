"""The HTTP event collector: the front door of attune.

Apps ``POST /v1/events``; the collector authenticates the write key, validates each event
against :mod:`attune.events`, pseudonymizes user ids, resolves consent from Redis, and answers
only after Kafka has acknowledged every event it accepted. How an event is accepted (parsing,
validation, pseudonymization, consent, the Kafka producer) is the core's :mod:`attune.ingest`,
which the personalization API shares; this package is the HTTP process around it:

* :mod:`attune.collector.metrics` – Prometheus metrics;
* :mod:`attune.collector.app` – the FastAPI app and ``attune serve collector``.
"""

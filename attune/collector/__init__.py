"""The HTTP event collector: the front door of attune.

Apps ``POST /v1/events``; the collector authenticates the write key, validates each event
against :mod:`attune.events`, pseudonymizes user ids, resolves consent from Redis, and answers
only after Kafka has acknowledged every event it accepted. The pieces:

* :mod:`attune.collector.ingest` – pure functions: body parsing, validation messages, consent
  resolution and the stored/dead-letter records (no I/O, unit-tested);
* :mod:`attune.collector.consent` – the per-user consent state in Redis;
* :mod:`attune.collector.producer` – the Kafka producer bridged to asyncio;
* :mod:`attune.collector.metrics` – Prometheus metrics;
* :mod:`attune.collector.app` – the FastAPI app and ``attune serve collector``.
"""

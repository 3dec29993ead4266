"""Accepting events: how an event becomes a Kafka record, shared by every process that logs one.

The collector (``POST /v1/events``) and the personalization API (impressions and feedback) both
turn raw events into the same stored records on the same topic, so what "accepted" means is part
of the core and written once:

* :mod:`attune.ingest.pipeline` – pure functions: body parsing, validation against
  :mod:`attune.events` with messages naming the field, pseudonymization, consent resolution and
  the stored / dead-letter records (no I/O);
* :mod:`attune.ingest.consent` – the per-user consent state in Redis (keys from
  :mod:`attune.keys`);
* :mod:`attune.ingest.producer` – the idempotent ``acks=all`` Kafka producer bridged to asyncio,
  which acknowledges a batch only once Kafka has stored every record of it.
"""

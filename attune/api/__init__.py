"""The personalization API (``attune serve api``): recommendations, similar items, content
slots, messages and feedback, answered in milliseconds from live features and trained models.

Modules, from the outside in:

* :mod:`attune.api.app` – the FastAPI app, its endpoints and ``attune serve api``;
* :mod:`attune.api.recommender` – the recommendation pipeline with its fallbacks;
* :mod:`attune.api.rules` – business rules as pure functions (seen, purchased, dismissed,
  suppressed categories, filters, boosts, pins, diversity), defined in the core
  (:mod:`attune.rules`, with the candidate pool :mod:`attune.candidates`) so that the offline
  evaluation of the served pipeline runs the same code;
* :mod:`attune.api.model_client` – a TF Serving protocol client (gRPC or REST) behind a
  circuit breaker (:mod:`attune.api.breaker`);
* :mod:`attune.api.store` – the Redis reads (one pipelined round trip per request) and the
  few keys the API itself writes (feedback undo, category suppression, message caps);
* :mod:`attune.api.events` – feedback and impression events through the collector's path
  (validation, consent, pseudonyms, the idempotent Kafka producer);
* :mod:`attune.api.targeting` – content slots and messages;
* :mod:`attune.api.keys` – read keys and per-key token-bucket rate limits;
* :mod:`attune.experiments` (the core package the API uses) – experiment declarations,
  assignment by hashing, running state, interleaving;
* :mod:`attune.api.process` – run the API as a child process (demo, tests, benchmarks).

The API talks to models only through the TF Serving protocol, so the official
``tensorflow/serving`` server and ``attune serve models`` are interchangeable by configuration.
"""

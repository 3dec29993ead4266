"""The speed layer: Spark Structured Streaming from the events topic to Redis and Delta bronze.

* :mod:`speed_layer.parsing` – Kafka records -> events, or the reason they cannot be used;
* :mod:`speed_layer.bronze` – the bronze and quarantine Delta tables, written exactly once;
* :mod:`speed_layer.catalog` – item metadata for enrichment (catalog topic or Delta table);
* :mod:`speed_layer.job` – the two streaming queries and the process running them;
* :mod:`speed_layer.control` – ``attune speed start | stop | status``.

The online features, as pure DataFrame functions shared with the nightly batch layer, live in
:mod:`attune.features`; the Redis key scheme and the idempotent write script in
:mod:`attune.online_store`.
"""

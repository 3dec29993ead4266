"""The batch layer: nightly Spark jobs over Delta Lake, bronze -> silver -> gold -> batch views.

Each stage is a module of pure ``DataFrame -> DataFrame`` functions plus one ``run_*`` edge that
reads and writes tables: :mod:`spark.silver`, :mod:`spark.gold`, :mod:`spark.views`,
:mod:`spark.maintenance`, with :mod:`spark.quality` (data-quality checks),
:mod:`spark.erasure` (right to erasure) and :mod:`spark.drift` (stream vs batch) alongside.
:mod:`spark.job` runs them for one logical date (``attune batch run --date YYYY-MM-DD``).
The tables are listed in :mod:`spark.tables` and ``docs/batch.md``.
"""

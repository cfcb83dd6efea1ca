"""trace: memory use of a Redis keyspace (live or from an RDB file) per key pattern, and its anomalies.

The engine only: :mod:`aml.trace.patterns` infers key patterns, :mod:`aml.trace.sniff` tells a value's
encoding from its first bytes, :mod:`aml.trace.live` reads a running Redis (read-only),
:mod:`aml.trace.rdbfile` reads an RDB file, :mod:`aml.trace.stats` aggregates per pattern,
:mod:`aml.trace.anomalies` flags what the AMAOS seed names (rapid growth, persistent keys, unused keys,
orphaned companions) and :mod:`aml.trace.timeseries` appends the seed's JSONL time series. The catalog
and Celery side is ``tasks/trace.py``.
"""

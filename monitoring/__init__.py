"""Monitoring of the garbage classifier: inference logging, drift, live accuracy, metrics.

Modules: ``events`` (KServe payload-logger CloudEvents), ``payloads`` (v1/v2 request and
response bodies), ``features`` (per-image features), ``store`` (SQLite/PostgreSQL), ``collector``
(the HTTP service), ``accuracy`` (live accuracy), ``reference`` (the champion's profile),
``drift`` and ``job`` (the drift job), ``metrics`` (Prometheus), ``payload_logger`` (local
CloudEvents emitter), ``cli`` (``garbage drift``, ``garbage collector``, and
``python -m monitoring drift|collector``). See monitoring/README.md.
"""

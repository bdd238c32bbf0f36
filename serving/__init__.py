"""The KServe model server of the garbage classifier (see serving/README.md).

Modules: ``model`` (the ``kserve.Model``), ``payload`` (reading images out of v1/v2 requests),
``rest`` (the model's fast REST routes and the refusals in front of KServe's), ``kserve_server``
(KServe's server without the model repository API, with truthful health), ``http_guard`` (read
timeouts and head limit of REST connections), ``batcher`` (micro-batching), ``settings`` (limits
and thread budget, the flags generated from them), ``metrics`` (Prometheus series), ``errors``
and ``server`` (``python -m serving``; ``garbage serve`` in ``cli.serve`` starts the same
server).
Importing the package imports nothing else.
"""

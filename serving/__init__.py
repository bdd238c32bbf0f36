"""The KServe model server of the garbage classifier (see serving/README.md).

Modules: ``model`` (the ``kserve.Model``), ``payload`` (reading images out of v1/v2 requests),
``rest`` (the model's fast REST routes), ``batcher`` (micro-batching), ``settings`` (limits and
thread budget), ``metrics`` (Prometheus series), ``errors``, ``server`` (``python -m serving``)
and ``cli`` (``garbage serve``). Importing the package imports nothing else.
"""

"""The training pipeline: its definition and compilation, the local runner, cluster submission.

Modules: ``training`` (the KFP pipeline, built for a GPU or a CPU-only cluster, and its
compilation), ``local`` (``garbage pipeline run`` through ``kfp.local``) with ``console`` (what
that run shows), ``submit`` (``garbage pipeline submit`` to a Kubeflow Pipelines cluster).
"""

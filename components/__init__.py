"""The pipeline's Kubeflow Pipelines components, one folder per step.

Each ``components/<step>/component.py`` is a thin ``@component`` over one plain function of the
ML library (``garbage.training.steps``, ``monitoring.reference``, ``garbage.deploy``). KFP ships
each component function's source on its own, so its imports live inside the function; the
project itself is installed in the components image (``components/Dockerfile``).
"""

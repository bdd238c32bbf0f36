"""The garbage classifier's ML library, split by dependency weight.

* ``garbage.core``: the light core (numpy, Pillow, ONNX Runtime, pydantic) that serving and
  monitoring import: config, preprocessing, the ONNX classifier, the wire protocol, model URIs.
* ``garbage.training``: the training side (torch, timm, MLflow) that only the pipeline imports:
  data, model, training, evaluation, export, the registry and its promotion gate.
* ``garbage.deploy``: the KServe deploy client (the Kubernetes API).

Importing the package imports nothing else.
"""

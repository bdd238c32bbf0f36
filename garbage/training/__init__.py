"""The training side: what the pipeline's steps run (torch, timm, MLflow, pandas).

``data`` (fetch, validate, split), ``model`` (backbones), ``dataset`` and ``train`` (the training
loop), ``evaluate``, ``export`` (ONNX), ``metrics``, ``registry`` (MLflow and the promotion gate)
and ``steps`` (each pipeline step as a plain function of the config and paths).

``model``, ``dataset``, ``train`` and ``export`` are the training core: they need only torch,
torchvision, timm, ONNX, scikit-learn, Pillow and numpy (and the core's preprocessing), so they
run on a bare GPU machine; tracking happens through the ``on_epoch`` callback.
"""

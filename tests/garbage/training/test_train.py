"""The training core: learns, selects the best epoch, and needs no orchestration stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support import CLASSES

from garbage.core.config import Config
from garbage.training.model import build_model
from garbage.training.train import (
    CheckpointError,
    TrainResult,
    load_checkpoint,
    save_checkpoint,
    source_weights,
    train_model,
    training_size,
    warm_ema,
)


def items(tree: Path, indices: range) -> list[tuple[str, int]]:
    return [(f"{c}/{c}{i}.jpg", k) for k, c in enumerate(CLASSES) for i in indices]


def train_small(config: Config, tree: Path, out: Path, **kwargs: Any) -> TrainResult:
    """Train on 4 images per class, validate on 2."""
    return train_model(config, tree, items(tree, range(4)), items(tree, range(4, 6)), out, **kwargs)


def test_training_learns_separable_synthetic_classes(
    image_tree: Path, smoke_config: Config, tmp_path: Path
) -> None:
    config = smoke_config.model_copy(
        update={"train": smoke_config.train.model_copy(update={"epochs": 4, "learning_rate": 3e-3})}
    )
    seen: list[int] = []
    result = train_model(
        config,
        image_tree,
        items(image_tree, range(6)),
        items(image_tree, range(6, 8)),
        tmp_path / "out",
        on_epoch=lambda epoch, metrics: seen.append(epoch),
    )
    assert seen == [1, 2, 3, 4]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.checkpoint.is_file()
    assert result.best_val_macro_f1 == max(h["val_macro_f1"] for h in result.history)
    assert result.best_val_macro_f1 > 0.3  # well above chance (1/6) after a few steps
    model, state = load_checkpoint(result.checkpoint)
    assert state["classes"] == CLASSES
    assert state["epoch"] == result.best_epoch
    pixels = torch.randint(
        0, 256, (1, state["image_height"], state["image_width"], 3), dtype=torch.uint8
    )
    assert model(pixels).shape == (1, len(CLASSES))


def test_training_is_reproducible_with_the_same_seed(
    image_tree: Path, smoke_config: Config, tmp_path: Path
) -> None:
    runs = [train_small(smoke_config, image_tree, tmp_path / str(i)) for i in range(2)]
    assert runs[0].history[0]["train_loss"] == runs[1].history[0]["train_loss"]


def test_early_epochs_train_at_low_resolution_and_the_average_is_saved(
    image_tree: Path, smoke_config: Config, tmp_path: Path
) -> None:
    config = smoke_config.model_copy(
        update={
            "train": smoke_config.train.model_copy(
                update={"epochs": 3, "low_res_scale": 0.5, "full_res_epochs": 1, "ema_decay": 0.9}
            )
        }
    )
    result = train_small(config, image_tree, tmp_path / "out")
    heights = [h["train_height"] for h in result.history]
    assert heights == [32, 32, config.model.image_height]  # 0.5 x 64, then the served size
    _, state = load_checkpoint(result.checkpoint)
    assert state["image_height"] == config.model.image_height  # what the model is served at


def test_the_epoch_callback_can_stop_training(
    image_tree: Path, smoke_config: Config, tmp_path: Path
) -> None:
    config = smoke_config.model_copy(
        update={"train": smoke_config.train.model_copy(update={"epochs": 5})}
    )
    seen: list[int] = []

    def stop_after_two(epoch: int, metrics: dict[str, float]) -> bool:
        seen.append(epoch)
        return epoch == 2

    result = train_small(config, image_tree, tmp_path / "out", on_epoch=stop_after_two)
    assert seen == [1, 2] and result.stopped_early
    assert len(result.history) == 2 and result.checkpoint.is_file()


def test_training_core_imports_no_orchestration_stack() -> None:
    """What the training core loads: no tracking, pipeline or serving stack.

    pandas is left out of the check: scikit-learn (the metrics) imports it when it is installed
    and does without it otherwise; that the project's training core never imports it is an
    import contract (``make lint``).
    """
    code = (
        "import sys, json; import garbage.training.train, garbage.training.export;"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    loaded = set(
        json.loads(
            subprocess.run(
                [sys.executable, "-c", code], check=True, capture_output=True, text=True
            ).stdout
        )
    )
    assert not loaded & {"mlflow", "kfp", "kserve", "evidently", "pydantic"}


class _Payload:
    """Unpickling this touches ``marker``: what a crafted best.pt could do with any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(
    smoke_config: Config, tmp_path: Path
) -> None:
    model = build_model("efficientnet_lite0", len(CLASSES), pretrained=False)
    save_checkpoint(tmp_path / "best.pt", model, CLASSES, smoke_config, {"epoch": 1})
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    marker = tmp_path / "payload-ran"
    torch.save({**state, "epoch": _Payload(marker)}, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match="could run code") as raised:
        load_checkpoint(tmp_path / "crafted.pt")
    assert str(tmp_path / "crafted.pt") in str(raised.value)
    assert not marker.exists()
    torch.load(tmp_path / "crafted.pt", weights_only=False)  # the payload is real
    assert marker.exists()


def test_checkpoints_hold_only_tensors_and_plain_values(
    smoke_config: Config, tmp_path: Path
) -> None:
    model = build_model("efficientnet_lite0", len(CLASSES), pretrained=False)
    extra = {"epoch": 2, "val_metrics": {"macro_f1": np.float64(0.5), "pair": (1, 2)}}
    save_checkpoint(tmp_path / "best.pt", model, CLASSES, smoke_config, extra)
    _, state = load_checkpoint(tmp_path / "best.pt")
    assert state["val_metrics"] == {"macro_f1": 0.5, "pair": [1, 2]}
    assert type(state["val_metrics"]["macro_f1"]) is float
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "bad.pt", model, CLASSES, smoke_config, {"x": np.int64(1)})


def test_a_checkpoint_missing_fields_is_a_clear_error(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint written by save_checkpoint"):
        load_checkpoint(tmp_path / "best.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "empty.pt")


def test_the_weight_average_starts_as_a_plain_mean_then_decays() -> None:
    average = warm_ema(0.9)
    values = [torch.tensor(float(v)) for v in (2, 4, 6)]
    mean = values[0]
    for n, value in enumerate(values[1:], start=1):
        mean = average(mean, value, torch.tensor(n))
    assert float(mean) == pytest.approx(4.0)  # (2 + 4 + 6) / 3: no pull towards the first value
    late = average(torch.tensor(0.0), torch.tensor(10.0), torch.tensor(100))
    assert float(late) == pytest.approx(1.0)  # past 1 / (1 - decay) updates: weight 1 - decay


def test_validation_starts_after_the_configured_share_of_epochs(
    image_tree: Path, smoke_config: Config, tmp_path: Path
) -> None:
    config = smoke_config.model_copy(
        update={"train": smoke_config.train.model_copy(update={"epochs": 4, "validate_from": 0.5})}
    )
    result = train_small(config, image_tree, tmp_path / "out")
    validated = [h["epoch"] for h in result.history if "val_macro_f1" in h]
    assert validated == [3, 4]
    assert result.best_epoch in (3, 4) and result.checkpoint.is_file()


def test_a_scale_of_one_trains_at_the_served_size_whatever_its_sides() -> None:
    assert training_size(84, 112, 1.0) == (84, 112)  # 84 is no multiple of 8
    assert training_size(168, 224, 0.67) == (112, 152)


def test_a_warm_start_begins_from_the_checkpoint_and_learns_faster(
    image_tree: Path, smoke_config: Config, tmp_path: Path
) -> None:
    first = train_small(smoke_config, image_tree, tmp_path / "first")
    cold = train_small(smoke_config, image_tree, tmp_path / "cold")
    warm = train_small(
        smoke_config, image_tree, tmp_path / "warm", init_checkpoint=first.checkpoint
    )
    assert warm.history[0]["train_loss"] < cold.history[0]["train_loss"]


def test_a_warm_start_from_other_classes_is_refused(
    image_tree: Path, smoke_config: Config, tmp_path: Path
) -> None:
    other = build_model(smoke_config.model.backbone, 2, pretrained=False)
    path = tmp_path / "other.pt"
    save_checkpoint(path, other, ["a", "b"], smoke_config, {})
    with pytest.raises(CheckpointError, match="classes"):
        train_small(smoke_config, image_tree, tmp_path / "out", init_checkpoint=path)


def test_source_weights_give_every_source_its_share() -> None:
    sources = ["trashnet"] * 9 + ["site"]
    even = source_weights(sources, 1.0)
    assert even is not None
    assert float(even[:9].sum()) == pytest.approx(float(even[9:].sum()))
    half = source_weights(sources, 0.5)
    assert half is not None
    assert float(half[9:].sum() / half[:9].sum()) == pytest.approx(1 / 3)  # sqrt(1/9)
    assert source_weights(sources, 0.0) is None
    assert source_weights(["trashnet"] * 4, 1.0) is None


def test_a_source_balanced_epoch_draws_other_images(
    image_tree: Path, smoke_config: Config, tmp_path: Path
) -> None:
    train = items(image_tree, range(4))
    sources = ["site" if path.endswith("0.jpg") else "trashnet" for path, _ in train]

    def first_loss(balance: float, name: str) -> float:
        config = smoke_config.model_copy(
            update={"train": smoke_config.train.model_copy(update={"source_balance": balance})}
        )
        result = train_model(
            config,
            image_tree,
            train,
            items(image_tree, range(4, 6)),
            tmp_path / name,
            train_sources=sources,
        )
        return result.history[0]["train_loss"]

    assert first_loss(1.0, "balanced") != first_loss(0.0, "plain")


def test_train_sources_must_match_the_training_images(
    image_tree: Path, smoke_config: Config, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="train_sources has 1 entries for 24 training images"):
        train_small(smoke_config, image_tree, tmp_path / "out", train_sources=["site"])

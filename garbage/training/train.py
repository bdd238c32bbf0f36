"""Fine-tune a backbone on the split manifest; keep the best checkpoint by validation macro-F1."""

from __future__ import annotations

import json
import math
import pickle
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from garbage.training.augment import AugmentSpec, augment_batch
from garbage.training.dataset import load_images
from garbage.training.metrics import classification_metrics
from garbage.training.model import GarbageClassifier, build_model

if TYPE_CHECKING:
    from garbage.core.config import Config

#: Called after every epoch with its number and metrics; returning True stops training there (a
#: pruned hyperparameter trial, early stopping).
EpochCallback = Callable[[int, dict[str, float]], bool | None]


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, holds more than tensors and plain values, or lacks a field."""


@dataclass
class TrainResult:
    """Where the best checkpoint is and how training went."""

    checkpoint: Path
    best_epoch: int
    best_val_macro_f1: float
    history: list[dict[str, float]] = field(default_factory=list)
    device: str = "cpu"
    train_images_per_second: float = 0.0
    seconds: float = 0.0
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(requested: str) -> torch.device:
    """Map ``auto``/``cpu``/``cuda`` to a device; ``cuda`` without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=auto")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CUDA (no loss scaling needed); full precision on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
) -> np.ndarray:
    """Logits ``[N, C]`` (float32) of ``model`` on ``uint8 [N, H, W, 3]`` images, in eval mode."""
    model.eval()
    outputs = []
    for batch in images.split(batch_size):
        with _autocast(device, amp):
            outputs.append(model(batch.to(device, non_blocking=True)).float().cpu())
    return torch.cat(outputs).numpy()


def warm_ema(
    decay: float,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | int], torch.Tensor]:
    """An exponential moving average that starts as a plain mean.

    Update ``n`` (0-based) weighs the new weights by ``max(1 - decay, 1 / (n + 1))``: the
    average of all steps so far until there are ``1 / (1 - decay)`` of them, an exponential
    moving average after that. The average carries no bias towards the initial weights, which
    matters in short runs.
    """

    def average(
        averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor | int
    ) -> torch.Tensor:
        weight = max(1 - decay, 1.0 / (float(num_averaged) + 1))
        return averaged + (current - averaged) * weight

    return average


def training_size(config_height: int, config_width: int, scale: float) -> tuple[int, int]:
    """The input size of a reduced-resolution epoch: ``scale`` of each side, a multiple of 8."""
    if scale >= 1:
        return config_height, config_width
    return (
        max(32, round(config_height * scale / 8) * 8),
        max(32, round(config_width * scale / 8) * 8),
    )


def source_weights(sources: Sequence[str], balance: float) -> torch.Tensor | None:
    """Per-image sampling weights that even out the data sources: ``n_source ** -balance``.

    Args:
        sources: The source of each training image.
        balance: 0 leaves the sources as they are; 1 draws every source equally often.

    Returns:
        The weights, or None when there is nothing to even out (one source, or ``balance`` 0).
    """
    if balance <= 0 or len(set(sources)) < 2:
        return None
    names, index = np.unique(np.asarray(sources), return_inverse=True)
    counts = np.bincount(index, minlength=len(names)).astype(float)
    return torch.tensor(counts[index] ** -balance, dtype=torch.float64)


def _class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(float)
    weights = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def save_checkpoint(
    path: Path,
    model: GarbageClassifier,
    classes: Sequence[str],
    config: Config,
    extra: dict[str, Any],
) -> None:
    """Save weights plus everything needed to rebuild the model without the config file.

    Besides the tensors, the checkpoint holds only JSON values (dicts, lists, strings, numbers),
    so that :func:`load_checkpoint` can read it with ``weights_only=True``.

    Raises:
        TypeError: ``extra`` holds something JSON cannot represent (a NumPy scalar, an object).
    """
    facts = {
        "classes": list(classes),
        "model": config.model.model_dump(mode="json"),
        "image_height": config.model.image_height,
        "image_width": config.model.image_width,
        "norm_mean": list(model.norm_mean),
        "norm_std": list(model.norm_std),
        **extra,
    }
    torch.save({"state_dict": model.state_dict(), **json.loads(json.dumps(facts))}, path)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents, read with ``weights_only=True`` (tensors and plain values)."""
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain values, which could run code "
            f"when loaded: refused ({str(e).splitlines()[0]}). Use a checkpoint written by "
            "`garbage pipeline run` (save_checkpoint), or train again"
        ) from e
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint written by save_checkpoint")
    return state


def load_checkpoint(path: Path) -> tuple[GarbageClassifier, dict[str, Any]]:
    """Rebuild the classifier from a checkpoint written by :func:`save_checkpoint`.

    The file is read with ``weights_only=True``: tensors and plain values only, so a crafted
    checkpoint cannot run code while it loads.

    Raises:
        CheckpointError: Unreadable, holding other objects, or missing a field.
    """
    state = _read_checkpoint(path)
    try:
        spec = state["model"]
        model = build_model(
            spec["backbone"],
            len(state["classes"]),
            pretrained=False,
            dropout=spec.get("dropout", 0.0),
        )
        model.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{path} is not a checkpoint written by save_checkpoint (missing or wrong {e}); "
            "train again to write one"
        ) from e
    model.eval()
    return model, state


def start_from(model: GarbageClassifier, path: Path, backbone: str, classes: Sequence[str]) -> int:
    """Load the weights of a checkpoint into ``model`` (a warm start).

    Returns:
        The number of tensors loaded.

    Raises:
        CheckpointError: Unreadable, or of another backbone or other classes.
    """
    state = _read_checkpoint(path)
    theirs = (
        state.get("model", {}).get("backbone") if isinstance(state.get("model"), dict) else None
    )
    if theirs != backbone or state.get("classes") != list(classes):
        raise CheckpointError(
            f"cannot start from {path}: it is a {theirs} for classes {state.get('classes')}, "
            f"this run trains a {backbone} for {list(classes)}; unset train.init_from or "
            "match model.backbone and data.classes"
        )
    try:
        model.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"cannot start from {path}: its weights do not fit ({e})") from e
    return len(state["state_dict"])


def train_model(
    config: Config,
    images_root: Path,
    train_items: Sequence[tuple[str, int]],
    val_items: Sequence[tuple[str, int]],
    out_dir: Path,
    on_epoch: EpochCallback | None = None,
    init_checkpoint: Path | None = None,
    train_sources: Sequence[str] | None = None,
) -> TrainResult:
    """Train the configured model and write ``best.pt`` into ``out_dir``.

    The recipe (``train`` section): AdamW with a warm-up and a cosine schedule, the backbone at a
    lower learning rate than the new head, early stages optionally frozen; augmentation on whole
    batches on the training device; the first epochs at ``low_res_scale`` of the input size and
    the last ``full_res_epochs`` at the size the model serves at (progressive resizing, which also
    corrects the train/test resolution discrepancy); an exponential moving average of the weights
    (``ema_decay``) is what is validated and saved. With ``train_sources`` and
    ``source_balance`` above 0, each epoch draws its images (as many as there are) with weights
    that even out the sources (:func:`source_weights`), so a site's few hundred labels are not
    drowned by the base set.

    Args:
        config: The validated run config (``model`` and ``train`` sections are used).
        images_root: Folder the manifest paths are relative to.
        train_items: ``(relative path, class index)`` pairs for training.
        val_items: The same for validation (model selection by macro-F1).
        out_dir: Where the checkpoint goes.
        on_epoch: Called after every epoch with the epoch number and its metrics (the
            ``val_*`` ones from ``train.validate_from`` on); when it returns True, training stops
            after that epoch and the best checkpoint so far stays.
        init_checkpoint: A checkpoint of the same backbone and classes to start from (a warm
            start, ``train.init_from``) instead of the backbone's pretrained weights.
        train_sources: The data source of each training image (the manifest's ``source``);
            None: one source.

    Raises:
        CheckpointError: ``init_checkpoint`` is unreadable or does not fit.
        ValueError: ``train_sources`` does not have one entry per training image.
    """
    tc, mc = config.train, config.model
    classes = config.data.classes
    seed_everything(tc.seed)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = resolve_device(tc.device)
    amp = tc.mixed_precision and device.type == "cuda"
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(tc.seed)
    if train_sources is not None and len(train_sources) != len(train_items):
        raise ValueError(
            f"train_sources has {len(train_sources)} entries for {len(train_items)} training "
            "images; give one source per image, or None"
        )
    draw = source_weights(train_sources or [], tc.source_balance)

    full_size = (mc.image_height, mc.image_width)
    train_x = load_images(images_root, [p for p, _ in train_items], *full_size, desc="train")
    train_y = torch.tensor([y for _, y in train_items], dtype=torch.long)
    val_x = load_images(images_root, [p for p, _ in val_items], *full_size, desc="validation")
    val_y = np.asarray([y for _, y in val_items])
    if device.type == "cuda":  # the whole split fits on the GPU: no host-to-device copy per step
        train_x, train_y = train_x.to(device), train_y.to(device)
    spec = AugmentSpec(**tc.augment.model_dump())

    model = build_model(
        mc.backbone,
        len(classes),
        pretrained=mc.pretrained,
        weights_path=mc.weights_path,
        dropout=mc.dropout,
    )
    if init_checkpoint is not None:
        start_from(model, init_checkpoint, mc.backbone, classes)
    model = model.to(device)
    model.freeze_early_stages(tc.freeze_stages)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = (
        AveragedModel(model, avg_fn=warm_ema(tc.ema_decay), use_buffers=True)
        if tc.ema_decay
        else None
    )
    step_model: Callable[[torch.Tensor], torch.Tensor] = (
        torch.compile(model, dynamic=False) if tc.compile else model
    )
    head = {id(p) for p in model.head_parameters()}
    body = [p for p in model.parameters() if id(p) not in head and p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": model.head_parameters(), "lr": tc.learning_rate},
            {"params": body, "lr": tc.learning_rate * tc.backbone_lr_scale},
        ],
        weight_decay=tc.weight_decay,
    )
    steps_per_epoch = max(1, len(train_y) // tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    warmup_steps = steps_per_epoch * tc.warmup_epochs

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    criterion = nn.CrossEntropyLoss(
        weight=_class_weights(train_y.tolist(), len(classes)).to(device),
        label_smoothing=tc.label_smoothing,
    )

    checkpoint = out_dir / "best.pt"
    best_f1, best_epoch = -1.0, 0
    history: list[dict[str, float]] = []
    train_seconds, train_images = 0.0, 0
    stopped_early = False
    started = time.perf_counter()
    for epoch in range(1, tc.epochs + 1):
        full_res = epoch > tc.epochs - tc.full_res_epochs
        size = full_size if full_res else training_size(*full_size, tc.low_res_scale)
        model.train()
        epoch_start, seen, loss_sum = time.perf_counter(), 0, 0.0
        # Whole batches only: a last batch of one image would break batch norm.
        order = (
            torch.randperm(len(train_y), generator=generator)
            if draw is None
            else torch.multinomial(draw, len(train_y), replacement=True, generator=generator)
        )
        batches = order[: steps_per_epoch * tc.batch_size].split(tc.batch_size)
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{tc.epochs} {size[0]}x{size[1]}",
            unit="batch",
            leave=False,
        )
        for index in bar:
            target = train_y[index.to(train_y.device)]
            pixels = augment_batch(
                train_x[index.to(train_x.device)].to(device), size, spec, generator
            )
            if tc.channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp):
                loss = criterion(step_model(pixels), target.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            seen += len(target)
            loss_sum += loss.item() * len(target)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", refresh=False)
        epoch_seconds = time.perf_counter() - epoch_start
        train_seconds += epoch_seconds
        train_images += seen

        metrics = {
            "train_loss": loss_sum / max(seen, 1),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": epoch_seconds,
            "train_images_per_second": seen / epoch_seconds,
            "train_height": float(size[0]),
        }
        line = (
            f"epoch {epoch}/{tc.epochs} at {size[0]}x{size[1]}: "
            f"train_loss {metrics['train_loss']:.3f}"
        )
        # Validation at the served size costs a third of a low-resolution epoch: it starts once an
        # epoch can be the best one (the weight average makes early epochs lag behind anyway).
        if epoch == tc.epochs or epoch > tc.validate_from * tc.epochs:
            evaluated = cast(GarbageClassifier, ema.module) if ema is not None else model
            logits = predict_logits(evaluated, val_x, tc.batch_size * 2, device, amp)
            val = classification_metrics(val_y, logits.argmax(1), classes)
            val_loss = float(
                nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(val_y))
            )
            metrics |= {
                "val_loss": val_loss,
                "val_accuracy": val["accuracy"],
                "val_macro_f1": val["macro_f1"],
            }
            line += (
                f" val_loss {val_loss:.3f} val_acc {val['accuracy']:.3f} "
                f"val_macro_f1 {val['macro_f1']:.3f}"
            )
            if val["macro_f1"] > best_f1:
                best_f1, best_epoch = val["macro_f1"], epoch
                save_checkpoint(
                    checkpoint,
                    evaluated,
                    classes,
                    config,
                    {"epoch": epoch, "val_metrics": {k: v for k, v in val.items()}},
                )
        history.append({"epoch": epoch, **metrics})
        tqdm.write(f"{line} ({epoch_seconds:.0f}s, {metrics['train_images_per_second']:.0f} img/s)")
        if on_epoch is not None and on_epoch(epoch, metrics):
            stopped_early = True
            break

    return TrainResult(
        checkpoint=checkpoint,
        best_epoch=best_epoch,
        best_val_macro_f1=best_f1,
        history=history,
        device=str(device),
        train_images_per_second=train_images / max(train_seconds, 1e-9),
        seconds=time.perf_counter() - started,
        stopped_early=stopped_early,
    )

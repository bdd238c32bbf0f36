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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from garbage.training.dataset import Augmenter, ManifestDataset
from garbage.training.metrics import classification_metrics
from garbage.training.model import GarbageClassifier, build_model

if TYPE_CHECKING:
    from garbage.core.config import Config

EpochCallback = Callable[[int, dict[str, float]], None]


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


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed + worker_id)
    np.random.seed((seed + worker_id) % 2**32)


def _loader(
    dataset: ManifestDataset, batch_size: int, shuffle: bool, workers: int, seed: int, pin: bool
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init,
        generator=generator,
        drop_last=False,
    )


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over ``loader``; return ``(logits [N, C] float32, labels [N])``."""
    model.eval()
    outputs, labels = [], []
    for pixels, target in loader:
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            logits = model(pixels.to(device, non_blocking=True))
        outputs.append(logits.float().cpu())
        labels.append(target)
    return torch.cat(outputs).numpy(), torch.cat(labels).numpy()


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


def load_checkpoint(path: Path) -> tuple[GarbageClassifier, dict[str, Any]]:
    """Rebuild the classifier from a checkpoint written by :func:`save_checkpoint`.

    The file is read with ``weights_only=True``: tensors and plain values only, so a crafted
    checkpoint cannot run code while it loads.

    Raises:
        CheckpointError: Unreadable, holding other objects, or missing a field.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain values, which could run code "
            f"when loaded: refused ({str(e).splitlines()[0]}). Use a checkpoint written by "
            "`garbage pipeline run` (save_checkpoint), or train again"
        ) from e
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
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


def train_model(
    config: Config,
    images_root: Path,
    train_items: Sequence[tuple[str, int]],
    val_items: Sequence[tuple[str, int]],
    out_dir: Path,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train the configured model and write ``best.pt`` into ``out_dir``.

    Args:
        config: The validated run config (``model`` and ``train`` sections are used).
        images_root: Folder the manifest paths are relative to.
        train_items: ``(relative path, class index)`` pairs for training.
        val_items: The same for validation (model selection by macro-F1).
        out_dir: Where the checkpoint goes.
        on_epoch: Called after every epoch with the epoch number and its metrics.
    """
    tc, mc = config.train, config.model
    classes = config.data.classes
    seed_everything(tc.seed)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = resolve_device(tc.device)
    amp = tc.mixed_precision and device.type == "cuda"
    out_dir.mkdir(parents=True, exist_ok=True)

    train_set = ManifestDataset(
        images_root,
        [p for p, _ in train_items],
        [y for _, y in train_items],
        mc.image_height,
        mc.image_width,
        Augmenter(tc.augment),
    )
    val_set = ManifestDataset(
        images_root,
        [p for p, _ in val_items],
        [y for _, y in val_items],
        mc.image_height,
        mc.image_width,
    )
    pin = device.type == "cuda"
    train_loader = _loader(train_set, tc.batch_size, True, tc.num_workers, tc.seed, pin)
    val_loader = _loader(val_set, tc.batch_size * 2, False, 0, tc.seed, pin)

    model = build_model(
        mc.backbone,
        len(classes),
        pretrained=mc.pretrained,
        weights_path=mc.weights_path,
        dropout=mc.dropout,
    ).to(device)
    model.freeze_early_stages(tc.freeze_stages)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    head = {id(p) for p in model.head_parameters()}
    body = [p for p in model.parameters() if id(p) not in head and p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": model.head_parameters(), "lr": tc.learning_rate},
            {"params": body, "lr": tc.learning_rate * tc.backbone_lr_scale},
        ],
        weight_decay=tc.weight_decay,
    )
    steps_per_epoch = max(1, math.ceil(len(train_set) / tc.batch_size))
    total_steps = steps_per_epoch * tc.epochs
    warmup_steps = steps_per_epoch * tc.warmup_epochs

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    criterion = nn.CrossEntropyLoss(
        weight=_class_weights([y for _, y in train_items], len(classes)).to(device),
        label_smoothing=tc.label_smoothing,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    checkpoint = out_dir / "best.pt"
    best_f1, best_epoch = -1.0, 0
    history: list[dict[str, float]] = []
    train_seconds, train_images = 0.0, 0
    started = time.perf_counter()
    for epoch in range(1, tc.epochs + 1):
        model.train()
        epoch_start, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{tc.epochs}", unit="batch", leave=False)
        for pixels, target in bar:
            pixels = pixels.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=amp):
                loss = criterion(model(pixels), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(target)
            loss_sum += loss.item() * len(target)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", refresh=False)
        epoch_seconds = time.perf_counter() - epoch_start
        train_seconds += epoch_seconds
        train_images += seen

        logits, labels = predict_logits(model, val_loader, device, amp)
        val = classification_metrics(labels, logits.argmax(1), classes)
        val_loss = float(
            nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
        )
        metrics = {
            "train_loss": loss_sum / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val["macro_f1"],
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": epoch_seconds,
            "train_images_per_second": seen / epoch_seconds,
        }
        history.append({"epoch": epoch, **metrics})
        tqdm.write(
            f"epoch {epoch}/{tc.epochs}: train_loss {metrics['train_loss']:.3f} "
            f"val_loss {val_loss:.3f} val_acc {val['accuracy']:.3f} "
            f"val_macro_f1 {val['macro_f1']:.3f} "
            f"({epoch_seconds:.0f}s, {metrics['train_images_per_second']:.0f} img/s)"
        )
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if val["macro_f1"] > best_f1:
            best_f1, best_epoch = val["macro_f1"], epoch
            save_checkpoint(
                checkpoint,
                model,
                classes,
                config,
                {"epoch": epoch, "val_metrics": {k: v for k, v in val.items()}},
            )

    return TrainResult(
        checkpoint=checkpoint,
        best_epoch=best_epoch,
        best_val_macro_f1=best_f1,
        history=history,
        device=str(device),
        train_images_per_second=train_images / max(train_seconds, 1e-9),
        seconds=time.perf_counter() - started,
    )

"""Serving settings: limits, micro-batching and thread budget, from defaults, environment and flags.

Every field can be set by an environment variable ``GARBAGE_SERVE_<FIELD>`` (upper case, e.g.
``GARBAGE_SERVE_MAX_BATCH_SIZE=16``) and by the matching command-line flag of ``garbage serve``
(``--max-batch-size``) or ``python -m serving`` (``--max_batch_size``); a flag beats the
environment, which beats the default.
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from garbage.core.names import MODEL_NAME
from garbage.core.preprocessing import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
)

ENV_PREFIX = "GARBAGE_SERVE_"
JSON_OVERHEAD_BYTES = 64 * 1024
"""What a REST body may hold besides its images: JSON structure, ids, parameters."""
INSTANCE_OVERHEAD_BYTES = 64
"""JSON around one image: ``{"image_bytes": {"b64": "..."}}`` and its separator."""


class SettingsError(ValueError):
    """A serving setting (flag or environment variable) is invalid."""


class ServingSettings(BaseModel):
    """How the model server runs and what it accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field(
        MODEL_NAME,
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="The model's name on the wire (URL paths, gRPC).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="ONNX Runtime device: cuda when its provider is installed, else cpu."
    )
    max_batch_size: int = Field(
        32, ge=1, le=1024, description="Most images in one model call (micro-batching)."
    )
    max_batch_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long an under-full batch waits for more requests while the model is idle. "
        "Requests that arrive while the model is busy are batched anyway, so 0 keeps "
        "single-request latency minimal; raise it on a GPU to trade latency for batch size.",
    )
    intra_op_threads: int | None = Field(
        None,
        ge=1,
        description="ONNX Runtime threads per model call; default: CPUs / workers on CPU, "
        "1 on CUDA.",
    )
    decode_threads: int | None = Field(
        None,
        ge=1,
        description="Threads decoding images (Pillow releases the GIL); default: CPUs / workers.",
    )
    max_instances: int = Field(64, ge=1, description="Most images in one request.")
    max_payload_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest request body (REST) or tensor payload (gRPC); the limit in force is "
        "the smaller of this and what max_instances images of max_image_bytes need.",
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        description="Largest width x height of one image (decompression-bomb guard).",
    )
    max_image_side: int = Field(
        DEFAULT_MAX_SIDE, ge=1, description="Largest width and height of one image, in pixels."
    )
    max_aspect_ratio: float = Field(
        DEFAULT_MAX_ASPECT_RATIO,
        ge=1,
        description="Largest longest-side / shortest-side ratio of one image.",
    )
    max_image_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        description="Largest encoded file, or uint8 pixel image, in one request, in bytes.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds a REST client has to send a request's line and headers.",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds a REST client has to send a request's body, once its headers are in.",
    )
    allowed_formats: tuple[str, ...] = Field(
        ("JPEG", "PNG"), min_length=1, description="Accepted encoded formats (Pillow names)."
    )
    access_log: bool = Field(
        False,
        description="uvicorn's access log line per request. Off by default: it costs the event "
        "loop about 0.15 ms per request and /metrics counts requests anyway.",
    )

    @property
    def max_body_bytes(self) -> int:
        """The largest REST body (or gRPC tensor data) accepted: what the limits can need.

        ``max_instances`` images of ``max_image_bytes`` each, base64-encoded in JSON, plus
        :data:`JSON_OVERHEAD_BYTES`; never more than ``max_payload_bytes``.
        """
        per_image = 4 * math.ceil(self.max_image_bytes / 3) + INSTANCE_OVERHEAD_BYTES
        return min(self.max_payload_bytes, self.max_instances * per_image + JSON_OVERHEAD_BYTES)

    @field_validator("allowed_formats", mode="before")
    @classmethod
    def _split_formats(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        return tuple(str(v).strip().upper() for v in value)

    @classmethod
    def from_sources(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ServingSettings:
        """Defaults, then ``GARBAGE_SERVE_*`` variables, then ``overrides`` whose value is not None.

        Raises:
            SettingsError: A value is invalid; the message names the setting and its variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw.strip():
                values[name] = raw.strip()
        unknown = set(overrides) - set(cls.model_fields)
        if unknown:
            raise SettingsError(f"unknown serving settings: {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])} (flag or {ENV_PREFIX}"
                f"{str(err['loc'][0]).upper()}): {err['msg']}"
                for err in e.errors()
            )
            raise SettingsError(f"invalid serving settings: {problems}") from e


@dataclass(frozen=True)
class SettingFlag:
    """One serving setting as a command-line flag; both command lines build theirs from these.

    ``garbage serve`` spells it ``--max-batch-size`` (``--access-log/--no-access-log`` for a
    switch), ``python -m serving`` ``--max_batch_size`` (KServe's style, ``--access_log true``).
    """

    name: str
    type: type
    help: str


def setting_flags() -> list[SettingFlag]:
    """Every :class:`ServingSettings` field as a flag, its help naming its variable and default."""
    flags = []
    for name, field in ServingSettings.model_fields.items():
        default = field.default
        if isinstance(default, tuple):
            default = ",".join(default)
        elif isinstance(default, bool):
            default = "on" if default else "off"
        shown = "" if default is None else f", default {default}"
        help_text = f"{field.description} (env {ENV_PREFIX}{name.upper()}{shown})"
        flags.append(SettingFlag(name, _flag_type(field.annotation), help_text))
    return flags


def _flag_type(annotation: Any) -> type:
    """``int | None`` -> int; ``Literal[...]`` and ``tuple[str, ...]`` -> str (validated later)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation in (int, float, bool, str):
        return annotation
    return str


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup (v2 or v1) CPU quota.

    ``os.cpu_count()`` reports the node's cores, which in a container with a CPU limit makes every
    thread pool oversubscribe the quota; this is the number the thread budget divides.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def thread_budget(
    settings: ServingSettings, workers: int = 1, cuda: bool = False, cpus: int | None = None
) -> tuple[int, int]:
    """``(intra_op_threads, decode_threads)`` for one server process.

    The CPUs are shared, not multiplied: each of ``workers`` processes gets ``share = cpus /
    workers``, and both ONNX Runtime and the decode pool get ``share`` threads. That does not
    oversubscribe: model calls are serialised per process by the micro-batcher, ONNX Runtime's
    threads stop spinning when a call returns (``garbage.core.classifier``), and decoding mostly
    runs while the model waits for its next batch. On CUDA the model needs one host thread.
    """
    share = max(1, (cpus or available_cpus()) // max(1, workers))
    intra = settings.intra_op_threads or (1 if cuda else share)
    decode = settings.decode_threads or share
    return intra, decode

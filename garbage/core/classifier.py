"""Run an exported ONNX classifier: the batch-prediction and serving backend (no torch needed).

The model folder holds ``model.onnx`` (uint8 ``[N, H, W, 3]`` in; ``logits`` and
``probabilities`` out) whose metadata properties carry the class names and input size;
``metadata.json`` beside it repeats them for people and tools and records the sha256 of every
file the model loads (``files``: ``model.onnx`` and any external-data file it names) and their
combined ``digest``.

A model folder is untrusted (it comes from an artifact store): :class:`OnnxClassifier` reads
``metadata.json`` within limits, checks every file against its recorded digest and keeps
external data inside the folder before ONNX Runtime sees the model, and refuses a folder that
records no digests unless ``allow_unverified=True`` is passed. Outputs that are not finite raise
:class:`NonFiniteOutputError` instead of reaching a caller as scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from garbage.core.preprocessing import (
    DEFAULT_ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    preprocess_bytes,
    resize_array,
)

MODEL_FILENAME = "model.onnx"
METADATA_FILENAME = "metadata.json"
INPUT_NAME = "image"
OUTPUT_LOGITS = "logits"
OUTPUT_PROBABILITIES = "probabilities"

MAX_METADATA_BYTES = 1 << 20
MAX_CLASSES = 1000
MAX_CLASS_NAME_LENGTH = 64
MIN_IMAGE_SIDE = 8
MAX_IMAGE_SIDE = 4096
MAX_MODEL_FILES = 64
MAX_FILE_NAME_LENGTH = 255


T = TypeVar("T")


class ModelLoadError(RuntimeError):
    """No usable ONNX model at the given location."""


class ModelIntegrityError(ModelLoadError):
    """A model's files are not the ones exported: the model is not loaded.

    A file is missing, lies outside the model folder or differs from the digest recorded at
    export, or the folder records no digests.
    """


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN or infinity: a broken or tampered model, a server error."""


_REDOWNLOAD = (
    "download the model again (or re-export it with `garbage pipeline run` and register it "
    "again); do not serve it as it is"
)


def _check_classes(value: object, source: str) -> list[str]:
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_CLASSES:
        raise ModelLoadError(f"{source}: classes must be a list of 2 to {MAX_CLASSES} names")
    for name in value:
        if not (
            isinstance(name, str)
            and 0 < len(name) <= MAX_CLASS_NAME_LENGTH
            and name.isprintable()
            and name.strip() == name
        ):
            raise ModelLoadError(
                f"{source}: class name {str(name)[:80]!r} is not a printable string of 1 to "
                f"{MAX_CLASS_NAME_LENGTH} characters"
            )
    if len(set(value)) != len(value):
        raise ModelLoadError(f"{source}: class names repeat")
    return list(value)


def _check_side(value: object, name: str, source: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelLoadError(f"{source}: {name} must be an integer, got {str(value)[:40]!r}")
    if not MIN_IMAGE_SIDE <= value <= MAX_IMAGE_SIDE:
        raise ModelLoadError(
            f"{source}: {name} {value} is outside {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} pixels"
        )
    return value


def _is_sha256(value: object) -> bool:
    hex_digits = "0123456789abcdef"
    return isinstance(value, str) and len(value) == 64 and all(c in hex_digits for c in value)


@dataclass(frozen=True)
class ModelMetadata:
    """What ``metadata.json`` records, within limits: it comes from an artifact store.

    Attributes:
        classes: 2 to 1000 unique printable names of at most 64 characters.
        image_height: Input height in pixels (8 to 4096).
        image_width: Input width in pixels (8 to 4096).
        files: sha256 of each file the model loads, by path relative to the model folder; empty
            for exports from before digests were recorded.
        digest: :func:`combined_digest` of ``files``; None when ``files`` is empty.
        extra: Every other field, as written (name, backbone, parity, run id...).
    """

    classes: list[str]
    image_height: int
    image_width: int
    files: dict[str, str] = field(default_factory=dict)
    digest: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> ModelMetadata:
        """Parse and check ``metadata.json`` at ``path``.

        Raises:
            ModelLoadError: The file is unreadable, larger than 1 MiB, not a JSON object, or
                breaks a limit; the message names the field.
        """
        source = str(path)
        try:
            with path.open("rb") as f:
                text = f.read(MAX_METADATA_BYTES + 1)
        except OSError as e:
            raise ModelLoadError(f"cannot read {path}: {e}") from e
        if len(text) > MAX_METADATA_BYTES:
            raise ModelLoadError(f"{source} is larger than {MAX_METADATA_BYTES} bytes: refused")
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ModelLoadError(f"{source} is not valid JSON: {str(e)[:200]}") from e
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{source} must hold a JSON object")
        return cls.from_dict(raw, source)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = METADATA_FILENAME) -> ModelMetadata:
        """Check a parsed ``metadata.json`` (see :meth:`read`); ``source`` names it in errors."""
        files = raw.get("files") or {}
        if not isinstance(files, dict) or len(files) > MAX_MODEL_FILES:
            raise ModelLoadError(
                f"{source}: files must map at most {MAX_MODEL_FILES} file names to sha256 digests"
            )
        for name, digest in files.items():
            if not (isinstance(name, str) and 0 < len(name) <= MAX_FILE_NAME_LENGTH):
                raise ModelLoadError(f"{source}: file name {str(name)[:80]!r} is not a short path")
            if not _is_sha256(digest):
                raise ModelLoadError(
                    f"{source}: the digest of {name} is not a lowercase hex sha256: "
                    f"{str(digest)[:80]!r}"
                )
        digest = raw.get("digest")
        if files and not _is_sha256(digest):
            raise ModelLoadError(f"{source}: files come without a sha256 digest of them all")
        known = {"classes", "image_height", "image_width", "files", "digest"}
        return cls(
            classes=_check_classes(raw.get("classes"), source),
            image_height=_check_side(raw.get("image_height"), "image_height", source),
            image_width=_check_side(raw.get("image_width"), "image_width", source),
            files=dict(files),
            digest=digest if files else None,
            extra={k: v for k, v in raw.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form :meth:`read` parses."""
        return {
            **self.extra,
            "classes": self.classes,
            "image_height": self.image_height,
            "image_width": self.image_width,
            "files": self.files,
            "digest": self.digest,
        }


# -- digests of the files a model loads ------------------------------------------------------

# Field numbers of onnx.proto (ONNX 1.23) on every path from a ModelProto to a TensorProto; the
# serving image has no onnx package, so the wire format is read here.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _TENSOR, _SPARSE, _FUNCTION, _TRAINING = range(8)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
}
_TENSOR_EXTERNAL_DATA = 13  # repeated StringStringEntryProto {key = 1, value = 2}
_MAX_NESTING = 64


class _MalformedModel(ValueError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _MalformedModel("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """``(field number, start, end)`` of each length-delimited field in ``data[start:end]``."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise _MalformedModel("a field runs past its message")
            yield key >> 3, pos, pos + length
            pos += length
        else:
            raise _MalformedModel(f"wire type {wire}")
    if pos != end:
        raise _MalformedModel("a field runs past its message")


def _locations(data: bytes, kind: int, start: int, end: int, depth: int) -> Iterator[bytes]:
    if depth > _MAX_NESTING:
        raise _MalformedModel(f"graphs nested deeper than {_MAX_NESTING}")
    children = _CHILDREN.get(kind, {})
    for number, s, e in _fields(data, start, end):
        if kind == _TENSOR and number == _TENSOR_EXTERNAL_DATA:
            entry = {n: data[a:b] for n, a, b in _fields(data, s, e)}
            if entry.get(1) == b"location":
                yield entry.get(2, b"")
        elif number in children:
            yield from _locations(data, children[number], s, e, depth + 1)


def _relative_name(location: str, model_file: Path) -> str:
    """``location`` normalised, when it names a file inside the model folder; else refused."""
    parts = PurePosixPath(location).parts
    if (
        not location
        or "\x00" in location
        or "\\" in location
        or PurePosixPath(location).is_absolute()
        or PureWindowsPath(location).anchor
        or ".." in parts
    ):
        raise ModelIntegrityError(
            f"{model_file} names the file {location[:200]!r}, which is not inside its folder "
            f"{model_file.parent}: refused (ONNX external data must lie beside the model); the "
            f"model is broken or crafted: {_REDOWNLOAD}"
        )
    name = posixpath.normpath(location)
    folder = model_file.parent.resolve()
    if not (folder / name).resolve().is_relative_to(folder):
        raise ModelIntegrityError(
            f"{model_file.parent / name} leads outside the model folder {folder} (a link): "
            f"refused; {_REDOWNLOAD}"
        )
    return name


def external_data_files(model_file: Path, data: bytes | None = None) -> list[str]:
    """Names, relative to the model's folder, of the external-data files ``model_file`` loads.

    Args:
        model_file: An ONNX model.
        data: Its bytes, when already read.

    Raises:
        ModelLoadError: The file is not an ONNX model.
        ModelIntegrityError: A location is absolute, climbs out with ``..`` or leads out
            through a link.
    """
    data = model_file.read_bytes() if data is None else data
    try:
        locations = {location.decode() for location in _locations(data, _MODEL, 0, len(data), 0)}
    except (_MalformedModel, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"{model_file} is not a readable ONNX model ({e}): {_REDOWNLOAD}"
        ) from e
    return sorted({_relative_name(location, model_file) for location in locations})


def _sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def combined_digest(files: Mapping[str, str]) -> str:
    """One sha256 for a model: of its ``sha256sum``-style listing, sorted by file name."""
    listing = "".join(f"{files[name]}  {name}\n" for name in sorted(files))
    return hashlib.sha256(listing.encode()).hexdigest()


def model_file_digests(model_file: Path) -> dict[str, str]:
    """sha256 of ``model_file`` and of every external-data file it loads, by relative name.

    What export records in ``metadata.json`` and :func:`verify_model_files` checks.
    """
    data = model_file.read_bytes()
    digests = {model_file.name: hashlib.sha256(data).hexdigest()}
    for name in external_data_files(model_file, data):
        digests[name] = _sha256_of(model_file.parent / name)
    return digests


def verify_model_files(model_file: Path, recorded: ModelMetadata) -> str:
    """Check every file ``model_file`` loads against the digests ``recorded`` at export.

    Returns:
        The model's combined digest.

    Raises:
        ModelIntegrityError: No digests recorded, a loaded file not recorded, a file missing,
            outside the folder or changed (the message names it and both digests).
    """
    metadata_file = model_file.parent / METADATA_FILENAME
    if not recorded.files:
        raise ModelIntegrityError(
            f"{metadata_file} records no digests of the model's files (an export from before "
            "they were recorded): nothing shows the model is the one exported. Re-export it with "
            "`garbage pipeline run` (and register it again), or load it with "
            "allow_unverified=True if you know where it comes from"
        )

    def changed(path: Path, expected: str, found: str) -> ModelIntegrityError:
        return ModelIntegrityError(
            f"{path} does not match the digest recorded at export in {metadata_file}: recorded "
            f"sha256 {expected}, found {found}. The file is corrupt or was altered: {_REDOWNLOAD}"
        )

    if model_file.name not in recorded.files:
        raise ModelIntegrityError(
            f"{metadata_file} records no digest of {model_file.name}: the model is not the one "
            f"exported; {_REDOWNLOAD}"
        )
    data = model_file.read_bytes()
    found = {model_file.name: hashlib.sha256(data).hexdigest()}
    if found[model_file.name] != recorded.files[model_file.name]:
        raise changed(model_file, recorded.files[model_file.name], found[model_file.name])
    unrecorded = sorted(set(external_data_files(model_file, data)) - recorded.files.keys())
    if unrecorded:
        raise ModelIntegrityError(
            f"{model_file} loads {', '.join(unrecorded)}, which {metadata_file} does not record: "
            f"the model is not the one exported; {_REDOWNLOAD}"
        )
    for name, expected in sorted(recorded.files.items()):
        if name == model_file.name:
            continue
        path = model_file.parent / _relative_name(name, model_file)
        if not path.is_file():
            raise ModelIntegrityError(
                f"{path} is missing: {metadata_file} records it (sha256 {expected}); {_REDOWNLOAD}"
            )
        found[name] = _sha256_of(path)
        if found[name] != expected:
            raise changed(path, expected, found[name])
    digest = combined_digest(found)
    if digest != recorded.digest:
        raise ModelIntegrityError(
            f"{metadata_file} records the digest {recorded.digest} for files whose digest is "
            f"{digest}: the metadata was altered; {_REDOWNLOAD}"
        )
    return digest


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), read lazily."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def predict_in_batches(
    run: Callable[[np.ndarray], np.ndarray], pixels: Iterable[np.ndarray], batch_size: int = 32
) -> np.ndarray:
    """The one batched-prediction loop: ``run`` on ``batch_size`` images at a time, in order.

    Args:
        run: A model: ``uint8 [N, H, W, 3]`` in, one row per image out (an ONNX session's
            probabilities, a PyTorch checkpoint's).
        pixels: ``uint8 [H, W, 3]`` images of the model's input size, consumed lazily.
        batch_size: Images per call of ``run``.

    Returns:
        The rows of every call, stacked: ``[N, C]`` (``[0, 0]`` for no image).
    """
    rows = [run(np.stack(chunk)) for chunk in batched(pixels, batch_size)]
    return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class Prediction:
    """One image's result."""

    label: str
    score: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: ``{"label", "score", "probabilities"}``."""
        return {"label": self.label, "score": self.score, "probabilities": self.probabilities}


def find_model_file(location: Path) -> Path:
    """Return ``model.onnx`` in ``location`` or in a sub-folder of it (MLflow, KServe layouts)."""
    location = Path(location)
    if location.is_file() and location.suffix == ".onnx":
        return location
    if not location.is_dir():
        raise ModelLoadError(f"model location {location} does not exist")
    direct = location / MODEL_FILENAME
    if direct.is_file():
        return direct
    found = sorted(location.rglob(MODEL_FILENAME))
    if not found:
        raise ModelLoadError(
            f"no {MODEL_FILENAME} under {location}; export a model with `garbage pipeline run` "
            "or point --model at an exported model folder"
        )
    return found[0]


def default_providers(device: str = "auto") -> list[str]:
    """ONNX Runtime execution providers for ``auto``/``cpu``/``cuda``, best first."""
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ModelLoadError(f"device=cuda but ONNX Runtime offers only {available}")
    return ["CPUExecutionProvider"]


class OnnxClassifier:
    """An exported garbage classifier, verified and ready to predict on bytes or pixels.

    Attributes:
        classes: Class names, in output order.
        height: Input height in pixels.
        width: Input width in pixels.
        metadata: The ONNX model's metadata properties.
        digest: The combined sha256 of the model's files, checked against ``metadata.json``;
            None for a model loaded with ``allow_unverified=True`` that records none.
        model_file: The ``.onnx`` file.
    """

    def __init__(
        self,
        model_file: Path,
        device: str = "auto",
        intra_op_threads: int | None = None,
        *,
        allow_unverified: bool = False,
    ):
        """Verify ``model_file`` against the ``metadata.json`` beside it, then open a session.

        Args:
            model_file: An exported ``.onnx`` file.
            device: ``auto``, ``cpu`` or ``cuda``.
            intra_op_threads: ONNX Runtime's threads per call; None for every CPU.
            allow_unverified: Load a model whose folder records no digests (no
                ``metadata.json``, or one from before digests were recorded). Recorded digests
                are checked whatever this says.

        Raises:
            ModelIntegrityError: See :func:`verify_model_files`; also ``metadata.json`` and the
                model disagreeing on classes or input size.
            ModelLoadError: An unreadable model or metadata, or missing classifier metadata.
        """
        model_file = Path(model_file)
        metadata_file = model_file.parent / METADATA_FILENAME
        recorded = ModelMetadata.read(metadata_file) if metadata_file.is_file() else None
        self.digest: str | None = None
        if recorded is not None and (recorded.files or not allow_unverified):
            self.digest = verify_model_files(model_file, recorded)
        elif recorded is None and not allow_unverified:
            raise ModelIntegrityError(
                f"no {METADATA_FILENAME} beside {model_file}: nothing records the digests of the "
                "model's files. Point at the whole exported folder (model.onnx with its "
                f"{METADATA_FILENAME}), re-export it with `garbage pipeline run`, or load it with "
                "allow_unverified=True if you know where it comes from"
            )
        else:
            external_data_files(model_file)  # unverified, but its external data stays inside
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        # Worker threads busy-wait between the operators of one call (no wake-up latency per
        # operator) and stop spinning when the call returns, so that between calls they leave
        # the CPUs to request decoding instead of burning them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self.session = ort.InferenceSession(
                str(model_file), sess_options=options, providers=default_providers(device)
            )
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"cannot load ONNX model {model_file}: {e}") from e
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            classes = json.loads(props["classes"])
            height, width = props["image_height"], props["image_width"]
        except (KeyError, ValueError, RecursionError) as e:
            raise ModelLoadError(f"{model_file} lacks the garbage-classifier metadata: {e}") from e
        self.classes: list[str] = _check_classes(classes, str(model_file))
        self.height = _check_side(height, "image_height", str(model_file))
        self.width = _check_side(width, "image_width", str(model_file))
        if recorded is not None:
            said = (recorded.classes, recorded.image_height, recorded.image_width)
            if said != (self.classes, self.height, self.width):
                raise ModelIntegrityError(
                    f"{metadata_file} describes classes {recorded.classes} at "
                    f"{recorded.image_height}x{recorded.image_width}, {model_file} classes "
                    f"{self.classes} at {self.height}x{self.width}: {_REDOWNLOAD}"
                )
        self.metadata = {k: props[k] for k in props}
        self.model_file = model_file

    @classmethod
    def load(
        cls,
        location: Path,
        device: str = "auto",
        intra_op_threads: int | None = None,
        *,
        allow_unverified: bool = False,
    ) -> OnnxClassifier:
        """Load from a model folder, an MLflow artifact folder or an ``.onnx`` file, verified.

        See the constructor for the arguments and errors.
        """
        return cls(
            find_model_file(location),
            device=device,
            intra_op_threads=intra_op_threads,
            allow_unverified=allow_unverified,
        )

    @property
    def providers(self) -> list[str]:
        """Execution providers in use."""
        return self.session.get_providers()

    def _run(self, output: str, pixels: np.ndarray) -> np.ndarray:
        rows: np.ndarray = self.session.run([output], {INPUT_NAME: pixels})[0]
        finite = np.isfinite(rows).all(axis=tuple(range(1, rows.ndim)))
        if not finite.all():
            raise NonFiniteOutputError(
                f"{self.model_file} produced NaN or infinity in its {output} for "
                f"{int((~finite).sum())} of {len(rows)} images: a broken or tampered model, a "
                "server error. Roll back to a model that passed evaluation, or re-export this one"
            )
        return rows

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, C]`` for ``uint8`` images ``[N, H, W, 3]`` of the model's size.

        Raises:
            NonFiniteOutputError: A probability is NaN or infinite.
        """
        return self._run(OUTPUT_PROBABILITIES, pixels)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """Logits ``[N, C]`` for ``uint8`` images ``[N, H, W, 3]`` of the model's size.

        Raises:
            NonFiniteOutputError: A logit is NaN or infinite.
        """
        return self._run(OUTPUT_LOGITS, pixels)

    def preprocess(
        self,
        data: bytes,
        allowed_formats: Sequence[str] = DEFAULT_ALLOWED_FORMATS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> np.ndarray:
        """Encoded bytes to the model's ``uint8 [H, W, 3]`` input (the shared preprocessing)."""
        return preprocess_bytes(
            data, self.height, self.width, allowed_formats=allowed_formats, max_pixels=max_pixels
        )

    def fit_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Resize one ``uint8 [h, w, 3]`` array to the model's input size."""
        return resize_array(pixels, self.height, self.width)

    def to_predictions(self, probabilities: np.ndarray) -> list[Prediction]:
        """Turn a probability matrix into labelled predictions."""
        results = []
        for row in probabilities:
            best = int(np.argmax(row))
            results.append(
                Prediction(
                    label=self.classes[best],
                    score=float(row[best]),
                    probabilities={c: float(p) for c, p in zip(self.classes, row, strict=True)},
                )
            )
        return results

    def predict_images(
        self, images: Iterable[np.ndarray], batch_size: int = 32
    ) -> list[Prediction]:
        """Classify decoded ``uint8 [h, w, 3]`` images of any size, ``batch_size`` at a time."""
        fitted = (self.fit_pixels(image) for image in images)
        return self.to_predictions(predict_in_batches(self.predict_pixels, fitted, batch_size))

    def predict_bytes(self, images: Iterable[bytes], batch_size: int = 32) -> list[Prediction]:
        """Classify encoded images, ``batch_size`` at a time."""
        return self.predict_images((self.preprocess(b) for b in images), batch_size)

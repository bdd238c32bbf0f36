"""The KServe predictor of the garbage classifier: ``kserve.Model`` over ``OnnxClassifier``.

Request flow (KServe's ``Model.__call__`` runs preprocess -> predict -> postprocess):

* ``preprocess`` reads the images out of the payload (:mod:`serving.payload`) and decodes them
  once, with the shared preprocessing, in a small thread pool (Pillow releases the GIL), so the
  event loop stays free; a lone image arriving while the model is idle is instead decoded on the
  model thread right before its model call (one thread hand-off less, nothing to overlap with);
* ``predict`` hands the pixels to the :class:`~serving.batcher.MicroBatcher`, which runs ONNX
  Runtime in its own thread on batches of concurrent requests;
* ``postprocess`` turns probabilities into labels in the protocol of the request (v1 dict or v2
  ``InferResponse``), updates the metrics and calls the optional ``on_prediction`` hook.

A model output that is not finite (``NonFiniteOutputError`` from the classifier) fails the whole
batch as a server error, counted in ``garbage_nonfinite_outputs_total``: never scores in a 200.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from kserve import Model
from kserve.model import InferenceVerb
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelInferRequest
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from PIL import Image

from garbage.core.classifier import (
    ModelLoadError,
    NonFiniteOutputError,
    OnnxClassifier,
    Prediction,
    default_providers,
)
from garbage.core.preprocessing import InvalidImageError, preprocess_bytes
from garbage.core.protocol import (
    BYTES_INPUT,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
    OUTPUT_SCORE,
    PIXELS_INPUT,
    classes_parameter,
    v1_response,
)
from serving.batcher import Deferred, MicroBatcher
from serving.errors import InputRejected
from serving.metrics import serving_metrics
from serving.payload import Parsed, grpc_payload_bytes, v1_images, v2_images
from serving.settings import ServingSettings, thread_budget

logger = logging.getLogger(__name__)

PredictionHook = Callable[[str, "list[bytes] | np.ndarray", "list[Prediction]"], Awaitable[None]]
"""``async on_prediction(request_id, inputs, predictions)``, called after each answered request.

``inputs`` is what the client sent: the encoded image files (``list[bytes]``) or the ``uint8
[N, H, W, 3]`` tensor; ``predictions`` has one :class:`~garbage.core.classifier.Prediction` per
image. It runs as a background task once the response is ready, so the response does not wait
for it, and an exception in it is logged and never reaches the client. This is where payload
logging (e.g. CloudEvents to a monitoring sink) plugs in; with ``workers > 1`` it must pickle (a
module-level function, or an object such as ``monitoring.payload_logger.CloudEventsHook``) to
be sent to the worker processes.
"""


@dataclass
class _Work:
    """One request between preprocess, predict and postprocess."""

    request_id: str
    protocol: str  # "v1", "v2" (REST) or "grpc"
    inputs: list[bytes] | np.ndarray
    pixels: np.ndarray | Deferred
    request: InferRequest | None = None
    probabilities: np.ndarray | None = None


class GarbageClassifierModel(Model):
    """Serves an exported garbage classifier over KServe's v1, v2 REST and v2 gRPC protocols.

    Args:
        name: The model's name on the wire.
        model_dir: A folder holding ``model.onnx`` (any layout ``OnnxClassifier.load`` accepts).
        settings: Limits, batching and threads.
        workers: Server processes sharing this machine's CPUs (divides the thread budget).
        on_prediction: Optional :data:`PredictionHook`.
    """

    def __init__(
        self,
        name: str,
        model_dir: Path,
        settings: ServingSettings | None = None,
        *,
        workers: int = 1,
        on_prediction: PredictionHook | None = None,
    ) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.settings = settings or ServingSettings(model_name=name)
        self.workers = workers
        self.on_prediction = on_prediction
        self.classifier: OnnxClassifier | None = None
        self.threads: dict[str, int] = {}
        self.model_sha256 = ""
        self._batcher: MicroBatcher | None = None
        self._decode_pool: ThreadPoolExecutor | None = None
        self._infer_pool: ThreadPoolExecutor | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._metrics = serving_metrics()
        #: Run on the model in each worker process after it is rebuilt there (``--workers > 1``):
        #: the server's routes and start-up hooks. A module-level function, so that it pickles.
        self.worker_setup: WorkerSetup | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self) -> bool:
        """Load the ONNX model, start the thread pools and answer a warm-up; then ready.

        Raises:
            ModelLoadError: No usable model at ``model_dir``, or it failed the warm-up.
        """
        self.stop()  # a reload replaces the pools
        self.classifier = None
        cuda = default_providers(self.settings.device)[0] == "CUDAExecutionProvider"
        intra, decode = thread_budget(self.settings, self.workers, cuda=cuda)
        classifier = OnnxClassifier.load(
            self.model_dir, device=self.settings.device, intra_op_threads=intra
        )
        self._warm_up(classifier, every_batch_size=cuda)
        self.threads = {"intra_op": intra, "decode": decode, "workers": self.workers}
        self._decode_pool = ThreadPoolExecutor(decode, thread_name_prefix="garbage-decode")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="garbage-onnx")
        batch_metrics = (
            self._metrics.batch_size.labels(self.name),
            self._metrics.batch_seconds.labels(self.name),
        )

        def on_batch(images: int, seconds: float) -> None:
            batch_metrics[0].observe(images)
            batch_metrics[1].observe(seconds)

        self._batcher = MicroBatcher(
            classifier.predict_pixels,
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_batch_wait_ms / 1000,
            executor=self._infer_pool,
            on_batch=on_batch,
        )
        # The digest export recorded over every file the model loads (metadata.json's `digest`).
        self.model_sha256 = classifier.digest or ""
        self.classifier = classifier
        self._stopped = False
        logger.info(
            "model %s loaded from %s: providers %s, threads %s",
            self.name,
            classifier.model_file,
            classifier.providers,
            self.threads,
        )
        self.ready = True
        return self.ready

    def _warm_up(self, classifier: OnnxClassifier, every_batch_size: bool = False) -> None:
        """Run the whole preprocessing and the model at batch 1 and at the largest batch.

        On CUDA every batch size up to the largest is run once: the CUDA provider picks its
        convolution algorithms per input shape on first use, which would otherwise land on the
        first request of each micro-batch size.
        """
        buffer = io.BytesIO()
        Image.new("RGB", (classifier.width, classifier.height), (128, 128, 128)).save(
            buffer, "JPEG"
        )
        pixels = self._decode_one(classifier, buffer.getvalue())
        largest = self.settings.max_batch_size
        for n in range(1, largest + 1) if every_batch_size else sorted({1, largest}):
            try:
                probabilities = classifier.predict_pixels(np.repeat(pixels[None], n, axis=0))
            except NonFiniteOutputError as e:
                raise ModelLoadError(f"{classifier.model_file} failed the warm-up: {e}") from e
            if (
                probabilities.shape != (n, len(classifier.classes))
                or not np.all(np.isfinite(probabilities))
                or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
            ):
                raise ModelLoadError(
                    f"{classifier.model_file} failed the warm-up: batch {n} gave probabilities of "
                    f"shape {probabilities.shape} that are not a distribution over "
                    f"{len(classifier.classes)} classes"
                )

    def start(self) -> None:
        """KServe calls this after registering the model; readiness stays what ``load`` made it."""

    @property
    def live(self) -> bool:
        """The model can answer: loaded, and its thread pools not stopped (liveness)."""
        return self.classifier is not None and not self._stopped

    async def healthy(self) -> bool:
        """Ready and live: what KServe's model readiness (v1, v2 and gRPC) reports."""
        return self.ready and self.live

    def stop(self) -> None:
        """Not ready any more; stop the thread pools."""
        self.ready = False
        self._stopped = True
        for pool in (self._decode_pool, self._infer_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def __reduce__(self) -> tuple[Any, ...]:
        """With ``--workers > 1`` KServe sends the model to each worker process: reload it there."""
        return restore_in_worker, (
            self.name,
            str(self.model_dir),
            self.settings.model_dump(),
            self.workers,
            self.on_prediction,
            self.enable_latency_logging,  # set by kserve.ModelServer before it spawns workers
            self.worker_setup,
        )

    # -- description -------------------------------------------------------------------------

    def _loaded(self) -> OnnxClassifier:
        if self.classifier is None:
            from kserve.errors import ModelNotReady

            raise ModelNotReady(self.name, "The model has not been loaded yet.")
        return self.classifier

    def get_input_types(self) -> list[dict[str, Any]]:
        """v2 metadata: either input, encoded files or RGB pixels."""
        classifier = self._loaded()
        return [
            {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
            {
                "name": PIXELS_INPUT,
                "datatype": "UINT8",
                "shape": [-1, classifier.height, classifier.width, 3],
            },
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        """v2 metadata: label, score and the probability of every class."""
        classes = len(self._loaded().classes)
        return [
            {"name": OUTPUT_LABEL, "datatype": "BYTES", "shape": [-1]},
            {"name": OUTPUT_SCORE, "datatype": "FP32", "shape": [-1]},
            {"name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": [-1, classes]},
        ]

    def describe(self) -> dict[str, Any]:
        """What the v2 REST metadata adds under ``parameters``: classes, input size, limits."""
        classifier = self._loaded()
        s = self.settings
        return {
            "classes": list(classifier.classes),
            "image_height": classifier.height,
            "image_width": classifier.width,
            "providers": classifier.providers,
            "model_sha256": self.model_sha256,
            "max_instances": s.max_instances,
            "max_payload_bytes": s.max_payload_bytes,
            "max_body_bytes": s.max_body_bytes,
            "max_image_bytes": s.max_image_bytes,
            "max_image_pixels": s.max_image_pixels,
            "max_image_side": s.max_image_side,
            "max_aspect_ratio": s.max_aspect_ratio,
            "allowed_formats": list(s.allowed_formats),
            "max_batch_size": s.max_batch_size,
        }

    # -- inference ---------------------------------------------------------------------------

    async def __call__(
        self,
        body: Any,
        headers: dict[str, str] | None = None,
        verb: InferenceVerb = InferenceVerb.PREDICT,
    ) -> Any:
        """KServe's pipeline, counting rejected requests by reason and non-finite outputs."""
        try:
            return await super().__call__(body, headers, verb)
        except InputRejected as e:
            self._metrics.rejected.labels(self.name, e.kind).inc()
            raise
        except NonFiniteOutputError:
            self._metrics.nonfinite.labels(self.name).inc()
            raise

    def validate(self, payload: Any) -> Any:
        """Checked in :meth:`preprocess` already (KServe's check assumes dict payloads)."""
        return payload

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> _Work:
        """Read and decode the request's images.

        ``payload`` is a v1 body (dict), a v2 or gRPC request, or a REST request the routes
        already parsed off the event loop (:class:`~serving.payload.Parsed`).
        """
        classifier = self._loaded()
        headers = headers or {}
        parsed = payload if isinstance(payload, Parsed) else self._parse(payload)
        request = parsed.request
        inputs = parsed.inputs
        request_id = (
            headers.get("x-request-id")
            or (request.id if request is not None else None)
            or uuid.uuid4().hex
        )
        assert self._batcher is not None
        pixels: np.ndarray | Deferred
        if isinstance(inputs, np.ndarray):
            pixels = await self._fit(classifier, inputs)
        elif len(inputs) == 1 and self._batcher.idle:
            pixels = partial(self._decode_now, classifier, inputs)
        else:
            pixels = await self._decode(classifier, inputs)
        self._metrics.request_images.labels(self.name, parsed.protocol).observe(len(inputs))
        return _Work(request_id, parsed.protocol, inputs, pixels, request)

    def _parse(self, payload: Any) -> Parsed:
        """The images of a v1 body, a v2 request or a gRPC request (on the event loop)."""
        if isinstance(payload, ModelInferRequest):
            payload = InferRequest.from_grpc(payload)
        if not isinstance(payload, InferRequest):
            return Parsed("v1", v1_images(payload, self.settings))
        if payload.from_grpc:
            size = grpc_payload_bytes(payload)
            limit = self.settings.max_body_bytes
            if size > limit:
                raise InputRejected(
                    f"the request carries {size} bytes of tensor data, over the limit of {limit}; "
                    "send fewer or smaller images",
                    "payload_too_large",
                )
        return Parsed(
            "grpc" if payload.from_grpc else "v2", v2_images(payload, self.settings), payload
        )

    async def predict(
        self,
        payload: _Work,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> _Work:
        """Run the model on the request's pixels, batched with concurrent requests."""
        assert self._batcher is not None
        payload.probabilities = await self._batcher.submit(payload.pixels, len(payload.inputs))
        return payload

    async def postprocess(
        self,
        result: _Work,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        """Labels, scores and probabilities in the request's protocol; metrics; the hook."""
        classifier = self._loaded()
        assert result.probabilities is not None
        predictions = classifier.to_predictions(result.probabilities)
        for prediction in predictions:
            self._metrics.predictions.labels(self.name, prediction.label).inc()
            self._metrics.score.labels(self.name).observe(prediction.score)
        if self.on_prediction is not None:
            task = asyncio.get_running_loop().create_task(
                self._notify(result.request_id, result.inputs, predictions)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if result.request is None:
            return v1_response(p.to_dict() for p in predictions)
        return self._v2_response(classifier, result, predictions)

    def _v2_response(
        self, classifier: OnnxClassifier, work: _Work, predictions: list[Prediction]
    ) -> InferResponse:
        assert work.request is not None and work.probabilities is not None
        n = len(predictions)
        outputs = [
            InferOutput(
                OUTPUT_LABEL,
                [n],
                "BYTES",
                data=np.array([p.label for p in predictions], dtype=np.object_),
            ),
            InferOutput(
                OUTPUT_SCORE,
                [n],
                "FP32",
                data=np.array([p.score for p in predictions], dtype=np.float32),
            ),
            InferOutput(
                OUTPUT_PROBABILITIES,
                [n, len(classifier.classes)],
                "FP32",
                data=np.ascontiguousarray(work.probabilities, dtype=np.float32),
                parameters=classes_parameter(classifier.classes),
            ),
        ]
        return InferResponse(
            response_id=work.request.id or work.request_id,
            model_name=self.name,
            infer_outputs=outputs,
            from_grpc=work.request.from_grpc,
            # gRPC: NumPy outputs always travel as raw_output_contents; KServe 0.21's to_grpc()
            # fails on NumPy data when this flag is set, so it only steers REST's binary outputs.
            use_binary_outputs=not work.request.from_grpc and work.request.use_binary_outputs,
            requested_outputs=work.request.request_outputs,
        )

    async def _notify(
        self, request_id: str, inputs: list[bytes] | np.ndarray, predictions: list[Prediction]
    ) -> None:
        assert self.on_prediction is not None
        try:
            await self.on_prediction(request_id, inputs, predictions)
        except Exception:  # a monitoring failure must never affect serving
            logger.exception("on_prediction hook failed for request %s", request_id)

    # -- decoding ----------------------------------------------------------------------------

    async def _decode(self, classifier: OnnxClassifier, images: list[bytes]) -> np.ndarray:
        """Decode and resize encoded images in the decode pool, in parallel chunks."""
        out = np.empty((len(images), classifier.height, classifier.width, 3), dtype=np.uint8)
        await self._in_chunks(len(images), partial(self._decode_into, classifier, images, out))
        return out

    def _decode_now(self, classifier: OnnxClassifier, images: list[bytes]) -> np.ndarray:
        """Decode and resize encoded images in the calling thread."""
        out = np.empty((len(images), classifier.height, classifier.width, 3), dtype=np.uint8)
        self._decode_into(classifier, images, out, 0, len(images))
        return out

    def _decode_into(
        self,
        classifier: OnnxClassifier,
        images: list[bytes],
        out: np.ndarray,
        start: int,
        stop: int,
    ) -> None:
        """Decode ``images[start:stop]`` into ``out[start:stop]``.

        Raises:
            InputRejected: An image is not a valid, allowed image (the message names which).
        """
        for i in range(start, stop):
            try:
                out[i] = self._decode_one(classifier, images[i])
            except InvalidImageError as e:
                where = f"image {i}: " if len(images) > 1 else ""
                raise InputRejected(f"{where}{e}", e.reason) from e

    def _decode_one(self, classifier: OnnxClassifier, data: bytes) -> np.ndarray:
        """One encoded image to the model's input, within the serving limits."""
        s = self.settings
        return preprocess_bytes(
            data,
            classifier.height,
            classifier.width,
            allowed_formats=s.allowed_formats,
            max_pixels=s.max_image_pixels,
            max_side=s.max_image_side,
            max_aspect_ratio=s.max_aspect_ratio,
        )

    async def _fit(self, classifier: OnnxClassifier, pixels: np.ndarray) -> np.ndarray:
        """Resize a pixel tensor to the model's input size (no-op when it already is)."""
        if pixels.shape[1:3] == (classifier.height, classifier.width):
            return pixels
        out = np.empty((len(pixels), classifier.height, classifier.width, 3), dtype=np.uint8)

        def fit_range(start: int, stop: int) -> None:
            for i in range(start, stop):
                out[i] = classifier.fit_pixels(pixels[i])

        await self._in_chunks(len(pixels), fit_range)
        return out

    async def _in_chunks(self, count: int, work: Callable[[int, int], None]) -> None:
        """Run ``work(start, stop)`` over ``range(count)`` split across the decode threads."""
        assert self._decode_pool is not None
        loop = asyncio.get_running_loop()
        chunks = min(count, self.threads["decode"])
        bounds = [count * k // chunks for k in range(chunks + 1)]
        await asyncio.gather(
            *(
                loop.run_in_executor(self._decode_pool, work, bounds[k], bounds[k + 1])
                for k in range(chunks)
            )
        )


WorkerSetup = Callable[[GarbageClassifierModel], None]
"""Prepares a rebuilt model in a KServe worker process (see :func:`restore_in_worker`)."""


def restore_in_worker(
    name: str,
    model_dir: str,
    settings: dict[str, Any],
    workers: int,
    on_prediction: PredictionHook | None,
    latency_logging: bool,
    setup: WorkerSetup | None,
) -> GarbageClassifierModel:
    """Rebuild the model in a KServe REST worker process (``--workers > 1``).

    KServe unpickles the model in the new process before that process starts answering its
    parent's liveness pings (5 s timeout), so the model is only created here; ``setup`` (the
    server's) makes it load at the worker's application start-up, and uvicorn accepts
    connections after that.
    """
    model = GarbageClassifierModel(
        name,
        Path(model_dir),
        ServingSettings(**settings),
        workers=workers,
        on_prediction=on_prediction,
    )
    model.enable_latency_logging = latency_logging
    model.worker_setup = setup
    if setup is not None:
        setup(model)
    return model

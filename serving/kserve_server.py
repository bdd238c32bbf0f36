"""KServe's model server without a model-lifecycle API, with truthful health and read limits.

KServe 0.20 ships three things this server must not have on the wire (checked against
``kserve/model_server.py``, ``protocol/dataplane.py``, ``protocol/rest/v2_endpoints.py`` and
``protocol/grpc/servicer.py`` of the 0.20.0 release):

* the model repository extension: REST ``POST /v2/repository/models/<name>/load|unload`` and
  gRPC ``RepositoryModelLoad``/``RepositoryModelUnload``, unauthenticated; one unload stopped the
  model for good. Here :class:`NoModelRepository` refuses both, the gRPC servicer
  (:class:`GarbageInferenceServicer`) answers them ``UNIMPLEMENTED`` with what to do instead,
  the REST routes are replaced by a 404 in :mod:`serving.rest`, and the server metadata no
  longer advertises the extension;
* health that always says yes: ``/v2/health/live`` and ``/v2/health/ready`` (and gRPC
  ``ServerLive``/``ServerReady``) answered true with no model loaded. :class:`ServingDataPlane`
  answers live only while every registered model can answer, and ready only while every one is
  ready (503 otherwise); a model that is not ready answers 503 / ``UNAVAILABLE`` instead of being
  reloaded on the event loop by the next request;
* an HTTP server without read timeouts: :class:`GarbageModelServer` gives uvicorn the protocol
  of :mod:`serving.http_guard`.

Also, the gRPC servicer names the input and the datatype when a ``ModelInfer`` tensor has a
datatype the protocol does not define (KServe says "invalid content type"), and looks the model
up before decoding the request.

None of KServe's files is changed: these are subclasses, handed to KServe where it takes them
(the gRPC server is KServe's ``GRPCServer`` with its own interceptors and options, started with
this servicer).
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

from grpc import ServicerContext, aio  # type: ignore[import-untyped]
from kserve import ModelServer
from kserve.errors import ModelNotFound, ModelNotReady
from kserve.model import BaseKServeModel
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from serving.errors import InputRejected
from serving.http_guard import LIMITS_ATTRIBUTE, GuardedHttpToolsProtocol, ReadLimits
from serving.metrics import serving_metrics
from serving.payload import quoted

DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    | {"FP16", "FP32", "FP64", "BYTES"}
)
"""The open inference protocol's tensor datatypes (what KServe's gRPC decoder reads)."""

LIFECYCLE_REFUSAL = (
    "the model repository API (load/unload) is disabled on this server: the model is loaded "
    "once at start-up; to change it, roll out a new revision of the InferenceService"
)


class ModelLifecycleDisabled(NotImplementedError):
    """A load or unload request; ``reason`` is what KServe's gRPC error mapping sends."""

    def __init__(self) -> None:
        super().__init__(LIFECYCLE_REFUSAL)
        self.reason = LIFECYCLE_REFUSAL


class NoModelRepository(ModelRepositoryExtension):
    """KServe's repository extension with load and unload refused (the index stays)."""

    async def load(self, model_name: str) -> None:
        """Refused.

        Raises:
            ModelLifecycleDisabled: Always.
        """
        raise ModelLifecycleDisabled()

    async def unload(self, model_name: str) -> None:
        """Refused.

        Raises:
            ModelLifecycleDisabled: Always.
        """
        raise ModelLifecycleDisabled()


def model_is_live(model: BaseKServeModel) -> bool:
    """A model's own ``live`` (see ``GarbageClassifierModel.live``), else its readiness."""
    return bool(getattr(model, "live", model.ready))


class ServingDataPlane(DataPlane):
    """KServe's data plane whose health reports the models it serves."""

    async def live(self) -> dict[str, str]:  # a staticmethod upstream
        """``{"status": "alive"}`` while at least one model is registered and every one is live."""
        models = list(self.model_registry.get_models().values())
        alive = bool(models) and all(model_is_live(m) for m in models)
        return {"status": "alive" if alive else "no model can answer"}

    async def ready(self) -> bool:
        """KServe's readiness, and every registered model ready (and at least one)."""
        names = list(self.model_registry.get_models())
        if not names or not await super().ready():
            return False
        for name in names:
            if not await self.model_registry.is_model_ready(name):
                return False
        return True

    async def get_model(self, name: str) -> BaseKServeModel:
        """The model, ready; unlike KServe's, a model that is not ready is not reloaded here.

        Raises:
            ModelNotFound: No model of that name.
            ModelNotReady: The model is registered but not ready.
        """
        model = self.get_model_from_registry(name)
        if not await self.model_registry.is_model_ready(name):
            raise ModelNotReady(name)
        return model

    def metadata(self) -> dict[str, Any]:
        """Server metadata, without the model repository extension this server does not offer."""
        return {**super().metadata(), "extensions": []}


class GarbageInferenceServicer(InferenceServicer):
    """KServe's gRPC servicer without model load/unload, checking ``ModelInfer`` tensors first."""

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        """Refused: ``UNIMPLEMENTED`` (through KServe's error mapping)."""
        raise ModelLifecycleDisabled()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        """Refused: ``UNIMPLEMENTED`` (through KServe's error mapping)."""
        raise ModelLifecycleDisabled()

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: ServicerContext
    ) -> pb.ModelInferResponse:
        """KServe's ``ModelInfer`` once the model exists and every datatype is one it can read.

        Raises:
            ModelNotFound: No such model (``NOT_FOUND``).
            InputRejected: A tensor of an unknown datatype (``INVALID_ARGUMENT``).
        """
        name = request.model_name
        if self._data_plane.model_registry.get_model(name) is None:
            raise ModelNotFound(quoted(name))
        for tensor in request.inputs:
            if tensor.datatype not in DATATYPES:
                error = InputRejected(
                    f"input {quoted(tensor.name)} has datatype {quoted(tensor.datatype)}, which "
                    "the open inference protocol does not define; this model takes "
                    "'image_bytes' as BYTES or 'image' as UINT8 (upper case)",
                    "bad_dtype",
                )
                serving_metrics().rejected.labels(name, error.kind).inc()
                raise error
        return await super().ModelInfer(request, context)


class GarbageGRPCServer(GRPCServer):
    """KServe's gRPC server, interceptors and options with :class:`GarbageInferenceServicer`."""

    async def start(self, max_workers: int) -> None:
        """Serve until stopped (KServe's ``GRPCServer.start`` with the servicer replaced)."""
        servicer = GarbageInferenceServicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
            options=[
                ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                (
                    "grpc.max_receive_message_length",
                    self._kwargs.get("grpc_max_receive_message_length"),
                ),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(f"[::]:{self._port}")
        await self._server.start()
        await self._server.wait_for_termination()


class GarbageModelServer(ModelServer):
    """``kserve.ModelServer`` with this module's data plane, repository and gRPC server.

    :class:`ServingDataPlane`, :class:`NoModelRepository`, :class:`GarbageGRPCServer`, and
    :class:`~serving.http_guard.GuardedHttpToolsProtocol` as uvicorn's HTTP protocol.

    Args:
        read_limits: Head and body read limits of every REST connection.
        **kwargs: ``kserve.ModelServer``'s arguments.
    """

    def __init__(self, read_limits: ReadLimits | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.read_limits = read_limits or ReadLimits()
        registry: ModelRepository = self.registered_models
        self.dataplane = ServingDataPlane(model_registry=registry)
        self.model_repository_extension = NoModelRepository(model_registry=registry)
        self._serve_grpc = False

    def start(self, models: list[BaseKServeModel]) -> None:
        """KServe's ``start``, with this class's gRPC server instead of KServe's own."""
        self._serve_grpc = bool(self.enable_grpc)  # type: ignore[has-type]  # untyped upstream
        self.enable_grpc = False
        super().start(models)

    async def _serve(self) -> None:
        # KServe's start() builds its REST server (and uvicorn's Config), then runs this: the
        # Config is loaded, and its protocol chosen, only once the servers run.
        from kserve.model_server import args

        rest = self._rest_server
        if rest is None and self._rest_multiprocess_server is not None:
            rest = self._rest_multiprocess_server._rest_server
        if rest is not None:
            rest.config.http = GuardedHttpToolsProtocol
            setattr(rest.config, LIMITS_ATTRIBUTE, self.read_limits)
        if self._serve_grpc:
            self._grpc_server = GarbageGRPCServer(
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs=vars(args),
                grace_period=self.grace_period,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        await super()._serve()

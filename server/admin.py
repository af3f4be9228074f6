"""The ``nmtserve.v1.Admin`` gRPC service: load and unload models of the repository, choose the default.

Guarded by its own bearer tokens (``admin_token_file``, read like ``auth_token_file`` by ``security.py``, checked by
the same ``BearerTokenInterceptor`` limited to this service's methods), so that a client allowed to translate is
not thereby allowed to change what the server serves. Without ``admin_token_file`` every call is refused with
PERMISSION_DENIED saying that the admin API is off; a missing or wrong token is UNAUTHENTICATED.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc
from google.protobuf.message import Message

from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.config import ServerConfig
from nmtserve.server.model_messages import model_status
from nmtserve.server.models import ModelRegistry, State
from nmtserve.server.service import parse
from nmtserve.server.validation import RequestError

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)

ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["Admin"].full_name
ADMIN_PREFIX = f"/{ADMIN_SERVICE}/"
OFF = "the admin API is off: start the server with admin_token_file (NMTSERVE_ADMIN_TOKEN_FILE) to use it"


def _not_found(registry: ModelRegistry, name: str) -> RequestError:
    return RequestError(
        grpc.StatusCode.NOT_FOUND, f"no model named {name!r}; the repository has: {', '.join(registry.names())}"
    )


async def load_model(registry: ModelRegistry, name: str, version: str) -> None:
    """Make ``name`` active (``version``: pin it besides the newest) and load it; RequestError if it fails."""
    await registry.reconcile()  # see what is on disk now
    model = registry.entries.get(name)
    if model is None:
        raise _not_found(registry, name)
    if version and model.version(version) is None:
        versions = ", ".join(v.version for v in model.versions)
        raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} has no version {version!r}; it has: {versions}")
    registry.active.add(name)
    registry.dismissed.discard(name)
    if version:
        registry.pinned.add((name, version))
    await registry.reconcile()
    wanted = version or (model.latest.version if model.latest else "")
    held = registry.loaded.get(name, {}).get(wanted)
    if held is not None and held.state is State.FAILED:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"{name}/{wanted} failed to load: {held.reason}")


async def unload_model(registry: ModelRegistry, name: str, version: str) -> None:
    """Unload every version of ``name`` (``version``: only that pinned one) once its requests are answered."""
    if name not in registry.entries and name not in registry.loaded:
        raise _not_found(registry, name)
    if version:
        serving = registry.serving(name)
        if serving is not None and serving.version == version and name in registry.active:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{name}/{version} is the serving version; unload the model (no model_version) or add a newer version",
            )
        registry.pinned.discard((name, version))
    else:
        if name == registry.default:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{name!r} is the default model; make another model the default first (SetDefaultModel)",
            )
        registry.active.discard(name)
        registry.dismissed.add(name)
        registry.pinned = {(m, v) for m, v in registry.pinned if m != name}
    await registry.reconcile()
    await registry.wait_unloads()


async def set_default_model(registry: ModelRegistry, name: str) -> None:
    if name not in registry.entries:
        raise _not_found(registry, name)
    if not registry.ready(name):
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION, f"model {name!r} has no ready version; load it first (LoadModel)"
        )
    registry.default = name
    await registry.notify()


class AdminService:
    """The Admin RPCs; ``registry`` is None until the server has started loading.

    Requests arrive as raw bytes and are parsed here (``service.parse``), as the Translator's are: gRPC's own
    deserializer turned a message that does not parse into UNKNOWN with a logged traceback."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.registry: ModelRegistry | None = None

    async def _run(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        data: bytes | Message,
        message_type: type[M],
        call: Callable[[ModelRegistry, M], Awaitable[None]],
    ) -> pb.ModelStatus:
        if self.config.admin_token_file is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, OFF)
        if self.registry is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is starting; retry shortly")
        registry = self.registry
        assert registry is not None
        failure = None
        try:
            request = parse(message_type, data)
            assert isinstance(request, message_type)
            name = str(getattr(request, "model"))  # noqa: B009 - every Admin request has it; M is any of them
            if not name:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "model: required (ListModels names the models)")
            await call(registry, request)
        except RequestError as error:
            failure = error.code, error.message
        if failure is not None:
            await _abort(context, *failure)
        log.info("admin call", extra={"fields": {"method": method, "name": name}})
        return model_status(registry, name, self.config)

    async def LoadModel(
        self, request: bytes | pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatus:
        return await self._run(
            context, "LoadModel", request, pb.LoadModelRequest, lambda r, m: load_model(r, m.model, m.model_version)
        )

    async def UnloadModel(
        self, request: bytes | pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatus:
        return await self._run(
            context,
            "UnloadModel",
            request,
            pb.UnloadModelRequest,
            lambda r, m: unload_model(r, m.model, m.model_version),
        )

    async def SetDefaultModel(
        self, request: bytes | pb.SetDefaultModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatus:
        return await self._run(
            context, "SetDefaultModel", request, pb.SetDefaultModelRequest, lambda r, m: set_default_model(r, m.model)
        )


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")


def add_admin_service(service: AdminService, server: grpc.aio.Server) -> None:
    """The Admin methods, with no request deserializer: the handlers parse (INVALID_ARGUMENT, not UNKNOWN)."""
    handlers = {
        "LoadModel": grpc.unary_unary_rpc_method_handler(
            service.LoadModel,
            response_serializer=pb.ModelStatus.SerializeToString,
        ),
        "UnloadModel": grpc.unary_unary_rpc_method_handler(
            service.UnloadModel,
            response_serializer=pb.ModelStatus.SerializeToString,
        ),
        "SetDefaultModel": grpc.unary_unary_rpc_method_handler(
            service.SetDefaultModel,
            response_serializer=pb.ModelStatus.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADMIN_SERVICE, handlers),))

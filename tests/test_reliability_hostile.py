"""Hostile clients and hostile settings (issue 18): a used port, reflection off, refused requests that must not
pin memory, the event loop kept free while requests are checked, bounded streams."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nmtserve.server.app import TranslationServer, serve
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig


def test_a_second_server_on_a_used_port_exits_2(caplog: pytest.LogCaptureFixture) -> None:
    """gRPC's default SO_REUSEPORT let a second server start and take half of the new connections."""

    async def scenario() -> tuple[int, int]:
        first = TranslationServer(ServerConfig(port=0, metrics_port=0))
        await first.start()
        try:
            return first.port, await serve(ServerConfig(port=first.port, metrics_port=0))
        finally:
            await first.stop()

    with caplog.at_level(logging.ERROR):
        port, status = asyncio.run(scenario())
    assert status == 2
    assert any(f"cannot listen on 127.0.0.1:{port}" in record.getMessage() for record in caplog.records)


def test_reuse_port_is_opt_in() -> None:
    async def scenario() -> int:
        first = TranslationServer(ServerConfig(port=0, metrics_port=0, reuse_port=True))
        await first.start()
        second = TranslationServer(ServerConfig(port=first.port, metrics_port=0, reuse_port=True))
        try:
            await second.start()  # both opted in: the kernel shares the port
            return second.port - first.port
        finally:
            await second.stop()
            await first.stop()

    assert asyncio.run(scenario()) == 0


@pytest.mark.parametrize("enabled", [True, False])
def test_reflection_can_be_turned_off(enabled: bool) -> None:
    config = ServerConfig(port=0, metrics_port=0, reflection=enabled)
    with BackgroundServer(config, load=False) as server, grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        if enabled:
            answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
            assert any(s.name == "nmtserve.v1.Translator" for s in answer.list_services_response.service)
        else:
            with pytest.raises(grpc.RpcError) as caught:
                next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

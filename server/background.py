"""Run a ``TranslationServer`` on its own event loop in a background thread of the current process.

For tests and embedding: the caller stays synchronous and talks to the server over real gRPC on its port. (For
load tests, run the server in another process instead: a load generator in the same process shares its GIL.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from nmtserve.engine import Engine
from nmtserve.server.app import TranslationServer
from nmtserve.server.config import ServerConfig

T = TypeVar("T")


class BackgroundServer:
    """``with BackgroundServer(config) as server: ... server.address ...``; loads the model unless ``load=False``."""

    def __init__(self, config: ServerConfig, load: bool = True, engine: Engine | None = None) -> None:
        self.config = config
        self.server = TranslationServer(config)
        self._load, self._engine = load, engine
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nmtserve-grpc", daemon=True)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coroutine`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.server.port}"

    @property
    def metrics_url(self) -> str:
        return self.server.metrics_url

    def start(self) -> BackgroundServer:
        self._thread.start()
        self.call(self.server.start())
        if self._load:
            self.load()
        return self

    def load(self) -> None:
        self.call(self.server.load(self._engine))

    def drain(self, timeout: float | None = None) -> bool:
        return self.call(self.server.drain(timeout))

    def stop(self) -> None:
        if self._thread.is_alive():
            self.call(self.server.stop(grace=0.5))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

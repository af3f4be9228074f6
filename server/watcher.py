"""Hot reload: rescan the model repository every few seconds and let the registry load and unload what changed.

Polling, not inotify: it needs no dependency, works on every filesystem a Kubernetes volume may be (NFS, a
ConfigMap's symlink swaps, an object-store mount), and a few seconds' delay is nothing next to a model's load.
A version must appear by rename (``.tmp-3`` → ``3``): dot-names are ignored, so a half-written one is never seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nmtserve.server.models import ModelRegistry

log = logging.getLogger(__name__)


class RepositoryWatcher:
    def __init__(self, registry: ModelRegistry, interval_s: float) -> None:
        self.registry, self.interval_s = registry, interval_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="nmtserve-repository-watcher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.registry.reconcile()
            except Exception:  # a bug must not end hot reload for the life of the process
                log.exception("model repository rescan failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

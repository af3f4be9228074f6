"""The loaded model versions of one server: their life cycle (loading, ready, failed, unloading) and routing.

Each loaded version is its own ``Backend`` (``backend.py``: engine, bounded queue, engine thread and request
checker), with the model's queue and batch settings (the server's, or ``REPO/<model>/config.toml``'s).

What is loaded follows the repository (``reconcile``, run at start, by the watcher and by admin calls): every
active model has its newest version loaded, plus the versions an admin call pinned. A newer version is loaded,
verified and warmed while the old one serves; once it is ready new requests go to it, and the old one is unloaded
when the requests it holds are answered (each request holds its version from routing to answer, ``acquire`` /
``release``), so a switch loses nothing and answers no request with an error. A new version that fails to load
is ``failed`` with its reason and the old one keeps serving; it is retried when its manifest changes.

Loads run one at a time so that the growth of the process's C heap across one load and warm-up is that version's
own size (``resident_bytes``, see ``held_bytes``). That growth is noisy both ways: other threads allocate meanwhile,
and their frees can cancel most of a small model's growth. So it is floored at the version's files, since a loaded
version holds at least its weights, which are nearly all of its files.
``memory_budget_bytes`` refuses a load when the versions already loaded plus the new one's files (the weights
dominate them: a pre-load estimate) would exceed it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from nmtserve.engine import Engine
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.backend import Backend, build_backend, files_bytes, held_bytes
from nmtserve.server.config import ConfigError, ServerConfig, engine_plan
from nmtserve.server.fairness import StepTurns
from nmtserve.server.metrics import ServerMetrics
from nmtserve.server.repository import ModelEntry, Repository, VersionEntry, version_key
from nmtserve.server.validation import Overloaded, RequestError, invalid, language_prefixes

log = logging.getLogger(__name__)

LOADING_RETRY_S = 1.0  # the retry hint while a model loads
MIB = 1024 * 1024


class State(enum.Enum):
    LOADING = pb.MODEL_STATE_LOADING
    READY = pb.MODEL_STATE_READY
    FAILED = pb.MODEL_STATE_FAILED
    UNLOADING = pb.MODEL_STATE_UNLOADING
    UNLOADED = pb.MODEL_STATE_UNLOADED


@dataclass(eq=False)
class ModelVersion:
    """One version the server holds, in any state but unloaded."""

    entry: VersionEntry
    state: State = State.LOADING
    reason: str = ""
    backend: Backend | None = None
    resident_bytes: int = 0
    inflight: int = 0  # requests routed here and not yet answered: unloading waits for 0
    last_used: float = 0.0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def name(self) -> str:
        return self.entry.model

    @property
    def version(self) -> str:
        return self.entry.version

    def enter(self) -> None:
        self.inflight += 1
        self.last_used = time.monotonic()
        self._idle.clear()

    def exit(self) -> None:
        self.inflight -= 1
        if self.inflight <= 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


class ModelRegistry:
    """The server's model versions. Only the event loop touches it (loads run in a worker thread)."""

    def __init__(
        self,
        config: ServerConfig,
        repository: Repository,
        metrics: ServerMetrics,
        on_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config, self.repository = config, repository
        self.metrics = metrics  # each version records into metrics.for_model(name, version)
        # one for every engine thread, a slot per engine worker: the models take fair turns on the CPU
        self.turns = StepTurns(slots=engine_plan(config)[0])
        self.on_change = on_change
        self.entries: dict[str, ModelEntry] = {}  # the last scan
        self.loaded: dict[str, dict[str, ModelVersion]] = {}  # model -> version -> what is held
        self.active: set[str] = set()  # models kept loaded
        self.pinned: set[tuple[str, str]] = set()  # (model, version) loaded besides the newest (admin)
        self.dismissed: set[str] = set()  # unloaded by an admin call: a rescan does not load them again
        self.default = ""
        self.load_all = not [m for m in config.models.split(",") if m.strip()]
        self._lock = asyncio.Lock()  # one reconcile (and so one load) at a time
        self._unloads: set[asyncio.Task] = set()
        self.unloaded_because: dict[tuple[str, str], str] = {}  # why a version was unloaded (for ListModels)

    # -- life cycle ----------------------------------------------------------------------------------------------

    async def start(self, engine: Engine | None = None) -> None:
        """Scan, choose the active models and the default, load them (``engine``: the default model's, given)."""
        self.repository.check()
        self.entries = await asyncio.to_thread(self.repository.scan)
        if not self.entries:
            raise ConfigError(f"the model repository {self.repository} holds no model (expected <model>/<version>/)")
        requested = [m.strip() for m in self.config.models.split(",") if m.strip()]
        unknown = [m for m in [*requested, self.config.default_model] if m and m not in self.entries]
        if unknown:
            raise ConfigError(
                f"models/default_model: {', '.join(unknown)} not in the repository (it has: {', '.join(self.entries)})"
            )
        self.active = set(requested or self.entries)
        self.default = self.config.default_model or sorted(self.active)[0]
        self.active.add(self.default)
        await self.reconcile(engine)

    async def stop(self) -> None:
        """Stop every engine thread (requests still running are told the server is shutting down)."""
        for task in list(self._unloads):
            task.cancel()
        for versions in list(self.loaded.values()):
            for held in list(versions.values()):
                if held.backend is not None:
                    await asyncio.to_thread(held.backend.stop)
                    held.backend = None
        self.loaded.clear()

    async def reconcile(self, engine: Engine | None = None) -> None:
        """Bring what is loaded in line with the repository: load what is wanted, unload what is not."""
        async with self._lock:
            try:
                entries = await asyncio.to_thread(self.repository.scan)
            except OSError as error:
                log.warning("model repository scan failed", extra={"fields": {"error": str(error)}})
                return
            self.entries = entries
            if self.load_all:
                self.active |= set(entries) - self.dismissed
            order = sorted(self.active, key=lambda name: (name != self.default, name))
            for name in order:
                model = entries.get(name)
                for wanted in self._wanted(name):
                    held = self.loaded.get(name, {}).get(wanted.version)
                    retry = held is not None and held.state is State.FAILED and held.entry.signature != wanted.signature
                    if held is None or retry:
                        given = engine if name == self.default and wanted is (model.latest if model else None) else None
                        await self._load(wanted, model, given)
                        engine = None if given is not None else engine
            self._unload_unwanted()
        await self.notify()

    async def notify(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    def _wanted(self, name: str) -> list[VersionEntry]:
        model = self.entries.get(name)
        if name not in self.active or model is None or model.latest is None:
            return []
        return [v for v in model.versions if v is model.latest or (name, v.version) in self.pinned]

    def _unload_unwanted(self) -> None:
        for name, versions in list(self.loaded.items()):
            wanted = {v.version for v in self._wanted(name)}
            serving = self.serving(name)
            replacement_ready = any(versions.get(v) is not None and versions[v].state is State.READY for v in wanted)
            for version, held in list(versions.items()):
                if version in wanted or held.state in (State.UNLOADING, State.LOADING):
                    continue
                if held is serving and wanted and not replacement_ready:
                    continue  # the newer version is loading or failed: this one keeps serving
                if held.state is State.FAILED or held.backend is None:
                    del versions[version]
                    continue
                model = self.entries.get(name)
                if model is None or model.version(version) is None:
                    why = "its directory was removed from the repository"
                elif name not in self.active:
                    why = "the model was unloaded"
                else:
                    why = "replaced by a newer version"
                self.start_unload(held, why)
            if not versions:
                del self.loaded[name]

    async def _load(self, entry: VersionEntry, model: ModelEntry | None, engine: Engine | None) -> ModelVersion:
        held = ModelVersion(entry)
        self.loaded.setdefault(entry.model, {})[entry.version] = held
        self.unloaded_because.pop((entry.model, entry.version), None)
        await self.notify()
        fields = {"name": entry.model, "version": entry.version, "model": str(entry.path)}
        log.info("loading model", extra={"fields": {**fields, "device": self.config.device}})
        try:
            if model is not None and model.error:
                raise ConfigError(model.error)
            config = model.config(self.config) if model is not None else self.config
            if engine is None:
                await self._make_room(entry)
                self._check_budget(entry)
            before = held_bytes()
            metrics = self.metrics.for_model(entry.model, entry.version)
            held.backend = await asyncio.to_thread(build_backend, entry, config, metrics, engine, self.turns)
            held.resident_bytes = max(held_bytes() - before, files_bytes(entry.path)) if engine is None else 0
            held.state = State.READY
            info, runtime = held.backend.engine.info, held.backend.engine.runtime
            self.metrics.describe_model(entry.model, entry.version, info.precision, config.device)
            log.info(
                "model ready",
                extra={
                    "fields": {
                        **fields,
                        "precision": info.precision,
                        "engine_workers": len(held.backend.scheduler.schedulers) if held.backend.scheduler else 0,
                        "intra_op_threads": runtime.config.intra_op_threads(),
                        **({"int8_kernels": runtime.int8_kernels} if info.precision == "int8" else {}),
                        "resident_mib": round(held.resident_bytes / MIB, 1),
                    }
                },
            )
        except Exception as error:
            held.state, held.reason = State.FAILED, f"{type(error).__name__}: {error}"
            log.error("model load failed", extra={"fields": {**fields, "error": held.reason}})
            self.metrics.forget_model(entry.model, entry.version)
        return held

    def _over_budget(self, entry: VersionEntry) -> bool:
        budget = self.config.memory_budget_bytes
        held = [h for versions in self.loaded.values() for h in versions.values() if h.backend is not None]
        return bool(budget) and sum(h.resident_bytes for h in held) + files_bytes(entry.path) > budget

    async def _make_room(self, entry: VersionEntry) -> None:
        """``memory_lru_unload``: unload idle models, least recently used first, until ``entry`` fits the budget.

        Never the default model, the model being loaded (its old version serves during a swap) or a version with
        requests in flight. An unloaded model stays unloaded (``UNLOADED``) until an admin call loads it."""
        while self.config.memory_lru_unload and self._over_budget(entry):
            idle = [
                held
                for name, versions in self.loaded.items()
                if name not in (entry.model, self.default)
                for held in versions.values()
                if held.state is State.READY and held.inflight == 0
            ]
            if not idle:
                return
            victim = min(idle, key=lambda held: held.last_used)
            self.active.discard(victim.name)
            self.dismissed.add(victim.name)
            self.pinned = {(m, v) for m, v in self.pinned if m != victim.name}
            reason = f"least recently used: unloaded to make room for {entry.model}/{entry.version} (memory budget)"
            await self.start_unload(victim, reason)

    def _check_budget(self, entry: VersionEntry) -> None:
        budget = self.config.memory_budget_bytes
        if not self._over_budget(entry):
            return
        held = [h for versions in self.loaded.values() for h in versions.values() if h.backend is not None]
        used = sum(h.resident_bytes for h in held)
        need = files_bytes(entry.path)
        if used + need > budget:
            taken = ", ".join(f"{h.name}/{h.version} {h.resident_bytes / MIB:.0f} MiB" for h in held) or "nothing"
            raise MemoryError(
                f"memory_budget_bytes {budget} ({budget / MIB:.0f} MiB) would be exceeded: {entry.model}/"
                f"{entry.version} needs about {need / MIB:.0f} MiB (its files) and {used / MIB:.0f} MiB are taken "
                f"({taken}); unload a model or raise the budget"
            )

    def start_unload(self, held: ModelVersion, reason: str) -> asyncio.Task:
        """Mark ``held`` unloading and free it once its requests are answered (a task: await it to wait)."""
        held.state, held.reason = State.UNLOADING, reason
        task = asyncio.create_task(self._unload(held))
        self._unloads.add(task)
        task.add_done_callback(self._unloads.discard)
        return task

    async def _unload(self, held: ModelVersion) -> None:
        """Wait for the version's requests to be answered (at most drain_timeout_s), then free it."""
        fields = {"name": held.name, "version": held.version, "reason": held.reason}
        log.info("unloading model", extra={"fields": {**fields, "inflight": held.inflight}})
        if not await held.wait_idle(self.config.drain_timeout_s):
            log.warning("unloading with requests in flight", extra={"fields": {**fields, "inflight": held.inflight}})
        backend, held.backend = held.backend, None
        if backend is not None:
            await asyncio.to_thread(backend.stop)
        del backend
        self.metrics.forget_model(held.name, held.version)  # after its engine thread stopped: nothing stale stays
        versions = self.loaded.get(held.name, {})
        if versions.get(held.version) is held:
            del versions[held.version]
            self.unloaded_because[(held.name, held.version)] = held.reason
            if not versions:
                self.loaded.pop(held.name, None)
        log.info("model unloaded", extra={"fields": fields})
        await self.notify()

    async def wait_unloads(self) -> None:
        """Wait for the unloads under way (tests and admin calls)."""
        while self._unloads:
            await asyncio.gather(*list(self._unloads), return_exceptions=True)

    # -- queries ---------------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(set(self.entries) | set(self.loaded))

    def serving(self, name: str) -> ModelVersion | None:
        """The version answering requests that name no version: the newest ready one still in the repository
        (else the newest ready one)."""
        ready = [h for h in self.loaded.get(name, {}).values() if h.state is State.READY]
        if not ready:
            return None
        model = self.entries.get(name)
        present = [h for h in ready if model is not None and model.version(h.version) is not None]
        return max(present or ready, key=lambda h: version_key(h.version))

    def ready(self, name: str) -> bool:
        return self.serving(name) is not None

    def any_ready(self) -> bool:
        return any(self.ready(name) for name in self.loaded)

    def versions(self, name: str) -> list[str]:
        """Every version of ``name`` on disk or held, oldest first."""
        on_disk = {v.version for v in self.entries[name].versions} if name in self.entries else set()
        return sorted(on_disk | set(self.loaded.get(name, {})), key=version_key)

    def languages(self, name: str) -> tuple[str, str, list[str]]:
        """(source, target, target languages of a multilingual model) of ``name``'s serving or newest version."""
        serving = self.serving(name)
        if serving is not None and serving.backend is not None:
            engine = serving.backend.engine
            pair = engine.info.manifest.get("languages", {})
            return pair.get("source", ""), pair.get("target", ""), list(getattr(engine.tokenizer, "languages", []))
        model = self.entries.get(name)
        if model is None or model.latest is None:
            return "", "", []
        return (*model.latest.languages, [])

    def served_pairs(self) -> list[tuple[str, str, str]]:
        """(model, source, target) of every active model, by name."""
        return [(name, *self.languages(name)[:2]) for name in sorted(self.active)]

    # -- routing ---------------------------------------------------------------------------------------------------

    def acquire(self, model: str, version: str, source: str = "", target: str = "") -> ModelVersion:
        """The ready version a request goes to, held until ``release``; RequestError otherwise."""
        held = self.find(model or self.route_by_languages(source, target), version)
        held.enter()
        return held

    def release(self, held: ModelVersion) -> None:
        held.exit()

    def _serves(self, name: str, source: str, target: str) -> bool:
        """Whether ``name`` takes requests for ``source`` -> ``target`` (an empty code: any).

        A loaded model is asked by the check its requests get (``language_prefixes``), so that routing and the
        model never disagree: M2M-100/NLLB/mBART take the source codes their tokenizer knows, and a target among
        them (mBART-cc25: its own); a single-pair model its manifest's pair. Routing used to look only at a
        multilingual model's targets, so an M2M-100 model matched eu->en (it has no Basque code) beside an eu->en
        model and the pair was refused as ambiguous. A tokenizer that needs no source code (OPUS-MT, a
        multilingual one with ``>>xx<<`` targets) accepts any source unchecked, so its source must be the
        manifest's. A model that is not loaded is matched by its manifest's pair."""
        own_source, own_target, _ = self.languages(name)
        serving = self.serving(name)
        if serving is None or serving.backend is None:
            return (not source or source == own_source) and (not target or target == own_target)
        engine = serving.backend.engine
        tokenizer = engine.tokenizer
        try:
            language_prefixes(source, target, tokenizer, engine.info.manifest.get("languages", {}))
        except RequestError:
            return False
        knows_sources = getattr(tokenizer, "forces_target_language", False) or hasattr(tokenizer, "request_languages")
        return knows_sources or not source or not own_source or source == own_source

    def route_by_languages(self, source: str, target: str) -> str:
        """The model for a language pair: the one that serves it (several: the default if it is one of them)."""
        if (not source and not target) or len(self.active) <= 1:  # one model: its own checks name its pair
            return self.default
        candidates = [name for name in sorted(self.active) if self._serves(name, source, target)]
        if len(candidates) == 1:
            return candidates[0]
        pair = f"{source or '*'}->{target or '*'}"
        if not candidates:
            served = ", ".join(f"{s}->{t} ({name})" for name, s, t in self.served_pairs())
            raise invalid(f"no model serves {pair} (source_language/target_language); served pairs: {served}")
        if self.default in candidates:
            return self.default
        raise invalid(f"several models serve {pair}: {', '.join(candidates)}; name one in TranslateRequest.model")

    def find(self, name: str, version: str = "") -> ModelVersion:
        """The ready version ``version`` (empty: the serving one) of ``name``, or the RequestError saying why not."""
        model = self.entries.get(name)
        held_versions = self.loaded.get(name, {})
        if model is None and not held_versions:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND, f"no model named {name!r}; the repository has: {', '.join(self.names())}"
            )
        if version:
            held = held_versions.get(version)
            if held is None:
                if model is None or model.version(version) is None:
                    raise RequestError(
                        grpc.StatusCode.NOT_FOUND,
                        f"model {name!r} has no version {version!r}; it has: {', '.join(self.versions(name))}",
                    )
                serving = self.serving(name)
                raise RequestError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"version {version!r} of model {name!r} is not loaded (serving: "
                    f"{serving.version if serving else 'none'}); Admin.LoadModel loads it",
                )
            return self._usable(held)
        serving = self.serving(name)
        if serving is not None:
            return serving
        if name not in self.active:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {name!r} is not loaded (not in the models setting); Admin.LoadModel loads it",
            )
        if any(h.state is State.LOADING for h in held_versions.values()) or not held_versions:
            raise Overloaded(
                f"model {name!r} is still loading; retry in {LOADING_RETRY_S:g} s",
                LOADING_RETRY_S,
                grpc.StatusCode.UNAVAILABLE,
            )
        failed = ", ".join(h.version for h in held_versions.values() if h.state is State.FAILED)
        raise RequestError(
            grpc.StatusCode.UNAVAILABLE,
            f"model {name!r} has no ready version: version(s) {failed or 'none'} failed to load (ListModels says why)",
        )

    def _usable(self, held: ModelVersion) -> ModelVersion:
        where = f"version {held.version!r} of model {held.name!r}"
        if held.state is State.READY:
            return held
        if held.state is State.LOADING:
            raise Overloaded(
                f"{where} is still loading; retry in {LOADING_RETRY_S:g} s",
                LOADING_RETRY_S,
                grpc.StatusCode.UNAVAILABLE,
            )
        if held.state is State.FAILED:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"{where} failed to load (ListModels says why)")
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"{where} is being unloaded ({held.reason})")

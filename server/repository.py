"""The model repository on disk: ``REPO/<model>/<version>/``, each version an exported model directory.

A scan reads directory names and each version's manifest (JSON, no sha256: cheap enough to run every few
seconds); the full check of every file against the manifest happens when a version is loaded (``models.py``).
Names starting with ``.`` are ignored, at both levels: a new version is written as ``REPO/m/.tmp-3`` and renamed
to ``REPO/m/3`` once complete (a rename is atomic), so a scan never sees a half-copied directory.

The newest version of a model is the highest numeric one when any version name is a number (``10`` after
``9``), else the lexicographically last. ``REPO/<model>/config.toml`` may override the model's queue and batch
settings (the keys of ``OVERRIDABLE``); anything else there is an error that fails the model's versions.

``--model DIR`` is a repository of one (``SingleModel``): the model's name and version come from its manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmtserve.engine.model_dir import MANIFEST, ModelDirError, read_manifest
from nmtserve.server.config import ConfigError, ServerConfig, _coerce, validate

log = logging.getLogger(__name__)

MODEL_CONFIG = "config.toml"
OVERRIDABLE = (  # per-model settings: what shapes one model's queue and batches, nothing server-wide
    "batching",
    "max_batch_size",
    "max_batch_tokens",
    "max_queue_delay_ms",
    "max_queue_size",
    "max_queue_tokens",
    "join_fraction",
    "max_join_steps",
    "max_later_joins",
    "join_window_steps",
)


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key: numeric versions by number and after every non-numeric one, the others lexicographically."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


@dataclass(frozen=True)
class VersionEntry:
    """One version directory as a scan saw it."""

    model: str
    version: str
    path: Path
    manifest: dict[str, Any] | None  # None when it cannot be read (``error`` says why)
    error: str = ""
    signature: tuple[int, int] = (0, 0)  # manifest (mtime_ns, size): a failed version is retried when it changes

    @property
    def languages(self) -> tuple[str, str]:
        pair = (self.manifest or {}).get("languages", {})
        return pair.get("source", ""), pair.get("target", "")

    @property
    def precision(self) -> str:
        return str((self.manifest or {}).get("precision", ""))


@dataclass(frozen=True)
class ModelEntry:
    """One model directory: its versions oldest first and its setting overrides."""

    name: str
    versions: tuple[VersionEntry, ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # config.toml is unusable: every version of the model fails with this

    @property
    def latest(self) -> VersionEntry | None:
        return self.versions[-1] if self.versions else None

    def version(self, version: str) -> VersionEntry | None:
        return next((v for v in self.versions if v.version == version), None)

    def config(self, base: ServerConfig) -> ServerConfig:
        """The server's settings with this model's overrides, validated (ConfigError names the file)."""
        if not self.overrides:
            return base
        try:
            return validate(dataclasses.replace(base, **self.overrides))
        except ConfigError as error:
            raise ConfigError(f"{self.name}/{MODEL_CONFIG}: {error}") from None


def _signature(path: Path) -> tuple[int, int]:
    try:
        stat = (path / MANIFEST).stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


def scan_version(model: str, version: str, path: Path) -> VersionEntry:
    try:
        manifest: dict[str, Any] | None = read_manifest(path)
        error = ""
    except ModelDirError as problem:
        manifest, error = None, str(problem)
    return VersionEntry(model, version, path, manifest, error, _signature(path))


def read_overrides(path: Path) -> dict[str, Any]:
    """The settings of ``REPO/<model>/config.toml`` (only ``OVERRIDABLE`` keys); ConfigError otherwise."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from None
    unknown = sorted(set(data) - set(OVERRIDABLE))
    if unknown:
        raise ConfigError(
            f"{path}: setting(s) {', '.join(unknown)} cannot be set per model; these can: {', '.join(OVERRIDABLE)}"
        )
    return {name: _coerce(name, value, f"file {path}") for name, value in data.items()}


def scan_model(path: Path) -> ModelEntry:
    versions = sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: version_key(p.name)
    )
    overrides: dict[str, Any] = {}
    error = ""
    if (path / MODEL_CONFIG).is_file():
        try:
            overrides = read_overrides(path / MODEL_CONFIG)
        except ConfigError as problem:
            error = str(problem)
    entries = tuple(scan_version(path.name, p.name, p) for p in versions)
    return ModelEntry(path.name, entries, overrides, error)


class DirectoryRepository:
    """``REPO/<model>/<version>/``, rescanned for hot reload."""

    watchable = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def check(self) -> None:
        if not self.root.is_dir():
            raise ConfigError(f"model_repository {self.root} is not a directory")

    def scan(self) -> dict[str, ModelEntry]:
        """Every model directory with at least one version; OSError when the repository cannot be read."""
        models = {}
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and not path.name.startswith("."):
                entry = scan_model(path)
                if entry.versions:
                    models[entry.name] = entry
        return models


class SingleModel:
    """``--model DIR``: a repository of one model with one version, named by its manifest."""

    watchable = False

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def check(self) -> None:
        return None  # a missing model is the load's failure, reported as before (``model load failed``)

    def names(self) -> tuple[str, str]:
        try:
            manifest = read_manifest(self.directory)
            return str(manifest["model"]["name"]), str(manifest["model"]["version"])
        except (ModelDirError, KeyError, TypeError):
            return self.directory.name or "model", "1"

    def scan(self) -> dict[str, ModelEntry]:
        name, version = self.names()
        return {name: ModelEntry(name, (scan_version(name, version, self.directory),))}


Repository = DirectoryRepository | SingleModel

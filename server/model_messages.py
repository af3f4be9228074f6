"""The API's descriptions of models: ``ModelInfo`` (one version, with the limits and defaults requests get) and
``ListModelsResponse`` (every model of the repository and the state of each version)."""

from __future__ import annotations

from importlib import metadata

from nmtserve.engine import Engine
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.config import ServerConfig, batching_mode
from nmtserve.server.models import ModelRegistry, ModelVersion, State
from nmtserve.server.validation import default_options


def server_version() -> str:
    try:
        return metadata.version("nmtserve")
    except metadata.PackageNotFoundError:
        return "unknown"


def model_info_message(engine: Engine, config: ServerConfig) -> pb.ModelInfo:
    """One loaded model as its manifest and ``config`` (the server's settings with the model's overrides) say."""
    info = engine.info
    languages = info.manifest.get("languages", {})
    defaults = default_options(config)
    return pb.ModelInfo(
        name=info.name,
        version=info.version,
        source_language=languages.get("source", ""),
        target_language=languages.get("target", ""),
        precision=info.precision,
        device=config.device,
        vocab_size=info.vocab_size,
        languages=list(getattr(engine.tokenizer, "languages", [])),
        limits=pb.Limits(
            max_texts_per_request=config.max_texts_per_request,
            max_input_tokens=config.max_input_tokens,
            max_beam_size=config.max_beam_size,
            max_output_length=config.max_output_length,
            max_batch_size=config.max_batch_size,
            max_batch_tokens=config.max_batch_tokens,
            max_queue_size=config.max_queue_size,
            max_input_bytes=config.max_input_bytes,
            max_message_bytes=config.max_message_bytes,
            max_length_penalty=config.max_length_penalty,
            max_queue_tokens=config.max_queue_tokens,
            max_inflight_per_connection=config.max_inflight_per_connection,
            max_request_bytes=config.max_request_bytes,
            max_sentences_per_request=config.max_sentences_per_request,
        ),
        default_options=pb.DecodingOptions(
            beam_size=defaults.beam_size,
            length_penalty=defaults.length_penalty,
            max_length=defaults.max_length,
            num_hypotheses=defaults.num_hypotheses,
            return_scores=defaults.return_scores,
        ),
        batching=batching_mode(config.batching, engine.info.cache_layout),
        server_version=server_version(),
        state=State.READY.value,
    )


def version_info(registry: ModelRegistry, held: ModelVersion, config: ServerConfig) -> pb.ModelInfo:
    """``ModelInfo`` of a ready version, named as in the repository, with its place among the model's versions."""
    assert held.backend is not None
    message = model_info_message(held.backend.engine, held.backend.config or config)
    message.name, message.version = held.name, held.version
    message.state, message.state_reason = held.state.value, held.reason
    message.resident_bytes = held.resident_bytes
    message.versions.extend(registry.versions(held.name))
    message.is_default = held.name == registry.default
    message.serving = registry.serving(held.name) is held
    return message


def version_status(registry: ModelRegistry, name: str, version: str, config: ServerConfig) -> pb.ModelVersionStatus:
    held = registry.loaded.get(name, {}).get(version)
    model = registry.entries.get(name)
    entry = held.entry if held is not None else (model.version(version) if model is not None else None)
    status = pb.ModelVersionStatus(version=version, device=config.device)
    if entry is not None:
        status.precision = entry.precision
    if held is None:
        status.state = State.UNLOADED.value
        status.reason = registry.unloaded_because.get((name, version), "")
        if entry is not None and entry.error:
            status.reason = entry.error  # not loaded, and could not be: its manifest is unusable
        return status
    status.state, status.reason, status.resident_bytes = held.state.value, held.reason, held.resident_bytes
    status.serving = registry.serving(name) is held
    return status


def model_status(registry: ModelRegistry, name: str, config: ServerConfig) -> pb.ModelStatus:
    source, target, languages = registry.languages(name)
    serving = registry.serving(name)
    return pb.ModelStatus(
        name=name,
        versions=[version_status(registry, name, v, config) for v in registry.versions(name)],
        serving_version=serving.version if serving is not None else "",
        is_default=name == registry.default,
        source_language=source,
        target_language=target,
        languages=languages,
    )


def list_models(registry: ModelRegistry, config: ServerConfig) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        models=[model_status(registry, name, config) for name in registry.names()], default_model=registry.default
    )

"""Server configuration: defaults < TOML file < ``NMTSERVE_*`` environment variables < command-line flags.

One frozen dataclass is the single source of truth: the flags, the environment variable names and the TOML keys
are all derived from its fields, so a new setting cannot be reachable one way and not another. Everything is
validated before the model is loaded, and unknown TOML keys are errors (a typo must not silently fall back to a
default in production).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmtserve.engine.cpu_budget import usable_cpus
from nmtserve.engine.int8_kernels import INT8_KERNELS
from nmtserve.engine.model_dir import MANIFEST, demo_export

ENV_PREFIX = "NMTSERVE_"
CONFIG_ENV = "NMTSERVE_CONFIG"  # path of the TOML file, when --config is not given
BATCHING_MODES = ("auto", "continuous", "request")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
CHOICES = {
    "device": ("cpu", "cuda"),
    "batching": BATCHING_MODES,
    "int8_kernels": INT8_KERNELS,
    "log_format": LOG_FORMATS,
    "log_level": LOG_LEVELS,
}


def batching_mode(setting: str, cache_layout: str) -> str:
    """The batching a model runs under: ``auto`` is continuous where its rows are ragged. Measured (docs/benchmarks.md,
    issue 17): with ragged rows continuous batching had the lower median at nearly every load and the lower or an
    equal p99 at 50 % and 90 %; with left-padded rows a joining sentence computes over the batch's whole history
    and request-level batching had the lower p99."""
    if setting != "auto":
        return setting
    return "continuous" if cache_layout == "ragged" else "request"


MAX_AUTO_WORKERS = 4  # more engine threads than this take turns on the GIL for the beam logic (11-15 % of a step)


def engine_plan(config: ServerConfig, cpus: int | None = None) -> tuple[int, int]:
    """(engine threads per model, intra-op threads per graph call) for ``cpus`` (default: the CPUs this process may
    use, cgroup quota included).

    Why several engine threads by default: on the demo model, two batches decoded side by side on two cores gave
    1.6-1.8x the tokens/s of one, where one batch with two intra-op threads gave 1.0-1.2x (docs/benchmarks.md,
    issue 17): a step is hundreds of small kernels, and splitting each of them costs about what it saves. A GPU
    runs one stream of steps, so it keeps one engine thread.
    """
    cpus = cpus or usable_cpus()
    workers = config.engine_workers or (1 if config.device == "cuda" else max(1, min(MAX_AUTO_WORKERS, cpus)))
    threads = config.threads or max(1, min(8, cpus // workers))
    return workers, threads


# Upper bounds. The limits travel in ModelInfo.limits as uint32; gRPC takes message sizes as a C int; a queue
# delay or a thread count beyond these is a typo, never a tuning (an infinite delay overflowed the engine thread's
# wait, a delay of 1e9 ms starved every request).
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
MAX_QUEUE_DELAY_MS = 1000.0
MAX_THREADS = 256
MAX_DRAIN_TIMEOUT_S = 3600.0
LIMIT_FIELDS = (  # the settings reported in ModelInfo.limits (uint32)
    "max_texts_per_request",
    "max_input_tokens",
    "max_beam_size",
    "max_output_length",
    "max_batch_size",
    "max_batch_tokens",
    "max_queue_size",
    "max_input_bytes",
    "max_message_bytes",
    "max_queue_tokens",
    "max_inflight_per_connection",
    "max_request_bytes",
    "max_sentences_per_request",
)


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or out of range; the message names the setting and its source."""


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerConfig:
    # Model and device
    model: Path | None = field(
        default=None, metadata={"help": "exported model directory (default: the shipped demo model)"}
    )
    model_repository: Path | None = field(
        default=None,
        metadata={"help": "model repository: DIR/<model>/<version>/ exported model directories (instead of model)"},
    )
    models: str = _setting("", "model repository: comma-separated models to load at start (default: all)")
    default_model: str = _setting(
        "", "model repository: the model for requests that name none (default: the only or first model by name)"
    )
    repository_poll_s: float = _setting(
        5.0, "model repository: seconds between scans for new or removed versions (hot reload; 0: off)"
    )
    memory_budget_bytes: int = _setting(
        0, "resident memory all loaded model versions may take; a load beyond it is refused (0: no budget)"
    )
    memory_lru_unload: bool = _setting(
        False,
        "when a load would exceed memory_budget_bytes, first unload the least recently used idle models (not the "
        "default one)",
    )
    admin_token_file: Path | None = field(
        default=None,
        metadata={
            "help": "file of bearer tokens for the nmtserve.v1.Admin service (load, unload, set default); "
            "unset: every admin call is refused"
        },
    )
    device: str = _setting("cpu", "onnxruntime device: cpu or cuda")
    engine_workers: int = _setting(
        0,
        "engine threads per model, each decoding its own batch on the model's one set of sessions (0: on CPU one "
        f"per CPU this process may use, cgroup quota included, at most {MAX_AUTO_WORKERS}; on CUDA 1)",
    )
    threads: int = _setting(
        0,
        "CPU intra-op threads per graph call (0: the CPUs this process may use, cgroup quota included, shared out "
        "among engine_workers, at most 8 each)",
    )
    spin: bool = _setting(False, "let idle onnxruntime threads spin (burns CPU that the gRPC thread and others need)")
    int8_kernels: str = _setting(
        "auto",
        "int8 exports on CPU: u8s8 (as exported; fastest with VNNI), u8u8 (weights shifted at load: exact where "
        "u8s8 sums saturate, x86 without VNNI), u8s7 (weights narrowed to 7 bits at load: exact there too and "
        "about as fast as u8s8, but further from fp32), or auto: u8u8 exactly where u8s8 would saturate",
    )
    # Network
    host: str = _setting("127.0.0.1", "address the gRPC server binds")
    port: int = _setting(50051, "gRPC port (0: any free port)")
    reuse_port: bool = _setting(
        False, "share the gRPC port with other processes (SO_REUSEPORT); off, a port in use is an error (exit 2)"
    )
    reflection: bool = _setting(True, "serve gRPC server reflection (grpcurl, grpc_cli); off hides the API's schema")
    metrics_host: str = _setting("127.0.0.1", "address the Prometheus endpoint binds")
    metrics_port: int = _setting(9090, "Prometheus /metrics port (0: any free port)")
    http_port: int = _setting(
        0, "HTTP port (LibreTranslate-compatible API, /v1 JSON API, the page), bound on host like port (0: off)"
    )
    http_cors_origins: str = _setting(
        "", "HTTP: comma-separated origins allowed by CORS, or * for any (default: none, same-origin pages only)"
    )
    http_max_connections: int = _setting(
        1024, "HTTP: open client connections; more are answered 503 and closed at once (0: no limit)"
    )
    http_slow_reader_timeout_s: float = _setting(
        10.0, "HTTP streaming: a client that reads nothing for this long is dropped and its work cancelled"
    )
    http_idle_timeout_s: float = _setting(
        60.0,
        "HTTP: a connection that has not sent a whole request's headers this long after it opened or after its "
        "last answer (idle keep-alive, slowloris) is closed",
    )
    http_body_timeout_s: float = _setting(
        60.0, "HTTP: a request body that has not all arrived this long after its headers is answered 408 and closed"
    )
    # Batching
    batching: str = _setting(
        "auto",
        "request (request-level dynamic batching), continuous (iteration-level), or auto: continuous for ragged "
        "exports (nmtserve export --ragged: joining rows pay no padding), request-level otherwise",
    )
    max_batch_size: int = _setting(32, "sentences decoded together")
    max_batch_tokens: int = _setting(4096, "padded source tokens decoded together (sentences x longest source)")
    max_queue_delay_ms: float = _setting(2.0, "how long an idle engine waits for a batch to fill")
    join_fraction: float = _setting(
        0.25, "continuous batching: waiting sentences join the running batch once they are this fraction of it"
    )
    max_join_steps: int = _setting(8, "continuous batching: ... or once this many decode steps passed since a join")
    max_later_joins: int = _setting(
        8,
        "continuous batching: once this many sentences have joined after the running batch's oldest sentence, "
        "newcomers wait for it to finish, which bounds how much later arrivals slow a long sentence (0: no limit)",
    )
    join_window_steps: int = _setting(
        8, "request-level batching: sentences arriving in a batch's first N decode steps join it (0: never)"
    )
    max_queue_size: int = _setting(4096, "sentences waiting; more are refused with RESOURCE_EXHAUSTED")
    max_queue_tokens: int = _setting(
        131072, "source tokens waiting (EOS included); more are refused with RESOURCE_EXHAUSTED"
    )
    max_inflight_per_connection: int = _setting(
        0, "requests in flight on one client connection; more are refused with RESOURCE_EXHAUSTED (0: no limit)"
    )
    # Request limits
    max_texts_per_request: int = _setting(256, "texts in one request")
    max_input_tokens: int = _setting(256, "SentencePiece tokens in one text (longer texts are refused, not cut)")
    max_input_bytes: int = _setting(8192, "UTF-8 bytes in one text, checked before tokenising")
    max_request_bytes: int = _setting(
        1024 * 1024, "document mode (TranslateRequest.format): UTF-8 bytes of all texts, checked before parsing"
    )
    max_sentences_per_request: int = _setting(
        1024, "document mode: sentences of one request, after long ones are split to fit max_input_tokens"
    )
    max_message_bytes: int = _setting(
        4 * 1024 * 1024, "size of one request message; larger ones are refused by gRPC with RESOURCE_EXHAUSTED"
    )
    reject_blank_texts: bool = _setting(
        False, "refuse blank texts (INVALID_ARGUMENT) instead of answering them with an empty translation"
    )
    max_beam_size: int = _setting(16, "largest beam a request may ask for")
    max_output_length: int = _setting(512, "largest max_length a request may ask for")
    max_length_penalty: float = _setting(10.0, "largest length_penalty a request may ask for")
    # Decoding defaults (a request's unset options)
    beam_size: int = _setting(4, "default beam size")
    length_penalty: float = _setting(1.0, "default length penalty")
    max_length: int = _setting(256, "default cap on output tokens")
    num_hypotheses: int = _setting(1, "default n-best size")
    return_scores: bool = _setting(True, "return hypothesis scores by default")
    stream_stall_timeout_s: float = _setting(
        30.0,
        "TranslateStream: how long a client may leave its answers unread (its buffer full, its requests paused) "
        "before the stream is cancelled with RESOURCE_EXHAUSTED",
    )
    # Security
    tls_cert: Path | None = field(
        default=None, metadata={"help": "PEM certificate chain of the server: serve TLS (with tls_key)"}
    )
    tls_key: Path | None = field(default=None, metadata={"help": "PEM private key of tls_cert"})
    tls_client_ca: Path | None = field(
        default=None,
        metadata={
            "help": "PEM CA bundle: require client certificates signed by it (mutual TLS; needs tls_cert)",
        },
    )
    auth_token_file: Path | None = field(
        default=None,
        metadata={
            "help": "file of accepted bearer tokens, one per line: require 'authorization: Bearer <token>' on every "
            "RPC but health checks",
        },
    )
    # Operations
    warmup: bool = _setting(True, "translate a few sentences before reporting SERVING")
    drain_timeout_s: float = _setting(30.0, "on SIGTERM, how long in-flight requests may take before the server stops")
    exit_on_load_failure: bool = _setting(
        False, "exit (status 1) when the model fails to load, instead of staying up with health NOT_SERVING"
    )
    log_format: str = _setting("text", "text or json (one JSON object per line)")
    log_level: str = _setting("info", "debug, info, warning or error")

    def as_dict(self) -> dict[str, Any]:
        return {
            f.name: (str(v) if isinstance(v := getattr(self, f.name), Path) else v) for f in dataclasses.fields(self)
        }


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(ServerConfig)}


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(name: str) -> type:
    annotation = str(FIELDS[name].type)
    for kind in (bool, int, float):
        if annotation == kind.__name__:
            return kind
    return Path if "Path" in annotation else str


def _coerce(name: str, value: Any, source: str, text: bool = False) -> Any:
    """``value`` as the field's type, or ConfigError; ``text``: parse a string (environment variables), else the
    value must already have the right type (TOML and flags are typed)."""
    kind = _kind(name)
    where = f"{name} ({source})"
    if text and isinstance(value, str) and kind is not str and kind is not Path:
        word = value.strip().lower()
        try:
            if kind is bool:
                if word in ("1", "true", "yes", "on"):
                    return True
                if word in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return kind(word)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a valid {kind.__name__}") from None
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if kind is float:
        return float(value)
    if kind is Path and isinstance(value, Path):
        return value.expanduser()
    if kind in (str, Path) and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return Path(value).expanduser() if kind is Path else value


def read_toml(path: Path) -> dict[str, Any]:
    """The settings of a TOML file: flat keys named as the fields (``max_batch_size = 32``)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path}: {error}") from None
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    values = {name: _coerce(name, value, f"file {path}") for name, value in data.items()}
    for name, value in values.items():  # relative paths are relative to the file, not to the working directory
        if isinstance(value, Path) and not value.is_absolute():
            values[name] = Path(path).parent / value
    return values


def read_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Settings from ``NMTSERVE_<FIELD>`` variables, and the names of NMTSERVE_ variables that match no field."""
    values, unknown = {}, []
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in FIELDS:
            values[name] = _coerce(name, raw, f"environment {key}", text=True)
        else:
            unknown.append(key)
    return values, sorted(unknown)


def validate(config: ServerConfig) -> ServerConfig:
    """Range and consistency checks; raises ConfigError naming every problem at once."""
    c, problems = config, []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    need(c.model is None or c.model_repository is None, "model and model_repository are exclusive: give one")
    need(
        c.model_repository is not None or not (c.models or c.default_model),
        "models and default_model need model_repository",
    )
    need(0 <= c.repository_poll_s <= MAX_DRAIN_TIMEOUT_S, f"repository_poll_s must be in 0..{MAX_DRAIN_TIMEOUT_S:g}")
    need(c.memory_budget_bytes >= 0, "memory_budget_bytes must be >= 0 (0: no budget)")
    for name, allowed in CHOICES.items():  # the flags' choices, for the TOML file and the variables too
        value = getattr(c, name)
        need(value in allowed, f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    for f in dataclasses.fields(c):  # inf and nan pass most comparisons below; no setting means either
        value = getattr(c, f.name)
        need(not isinstance(value, float) or math.isfinite(value), f"{f.name} must be a finite number, not {value}")
    for name in LIMIT_FIELDS:  # ModelInfo.limits carries them as uint32
        need(getattr(c, name) <= UINT32_MAX, f"{name} must be <= {UINT32_MAX} (uint32)")
    need(0 <= c.threads <= MAX_THREADS, f"threads must be in 0..{MAX_THREADS}")
    need(0 <= c.engine_workers <= MAX_THREADS, f"engine_workers must be in 0..{MAX_THREADS}")
    for name in ("port", "metrics_port"):
        need(0 <= getattr(c, name) <= 65535, f"{name} must be in 0..65535")
    need(c.port == 0 or c.port != c.metrics_port or c.host != c.metrics_host, "port and metrics_port must differ")
    need(0 <= c.http_port <= 65535, "http_port must be in 0..65535 (0: off)")
    need(c.http_port == 0 or c.http_port != c.port, "http_port and port must differ")
    need(
        c.http_port == 0 or c.http_port != c.metrics_port or c.host != c.metrics_host,
        "http_port and metrics_port must differ",
    )
    need(c.http_slow_reader_timeout_s > 0, "http_slow_reader_timeout_s must be > 0")
    for name in ("http_idle_timeout_s", "http_body_timeout_s"):
        need(0 < getattr(c, name) <= MAX_DRAIN_TIMEOUT_S, f"{name} must be in (0, {MAX_DRAIN_TIMEOUT_S:g}]")
    need(c.http_max_connections >= 0, "http_max_connections must be >= 0 (0: no limit)")
    for name in ("max_batch_size", "max_batch_tokens", "max_queue_size", "max_texts_per_request", "max_input_tokens"):
        need(getattr(c, name) >= 1, f"{name} must be >= 1")
    need(c.max_queue_delay_ms >= 0, "max_queue_delay_ms must be >= 0")
    need(c.max_queue_delay_ms <= MAX_QUEUE_DELAY_MS, f"max_queue_delay_ms must be <= {MAX_QUEUE_DELAY_MS:g}")
    need(0 <= c.join_fraction <= 1, "join_fraction must be in 0..1")
    need(c.max_join_steps >= 1, "max_join_steps must be >= 1")
    need(c.max_later_joins >= 0, "max_later_joins must be >= 0")
    need(c.join_window_steps >= 0, "join_window_steps must be >= 0")
    need(
        c.max_batch_tokens >= c.max_input_tokens + 1,
        f"max_batch_tokens ({c.max_batch_tokens}) must hold one longest text: >= max_input_tokens + 1 "
        f"({c.max_input_tokens + 1})",
    )
    need(c.max_queue_size >= c.max_texts_per_request, "max_queue_size must be >= max_texts_per_request")
    need(
        c.max_queue_tokens >= c.max_texts_per_request * (c.max_input_tokens + 1),
        f"max_queue_tokens ({c.max_queue_tokens}) must hold one largest request: >= max_texts_per_request x "
        f"(max_input_tokens + 1) ({c.max_texts_per_request * (c.max_input_tokens + 1)})",
    )
    need(c.max_inflight_per_connection >= 0, "max_inflight_per_connection must be >= 0 (0: no limit)")
    need(c.max_input_bytes >= 1, "max_input_bytes must be >= 1")
    need(c.max_request_bytes >= 1, "max_request_bytes must be >= 1")
    need(c.max_sentences_per_request >= 1, "max_sentences_per_request must be >= 1")
    need(
        1024 <= c.max_message_bytes <= INT32_MAX,
        f"max_message_bytes must be in 1024..{INT32_MAX} (gRPC takes it as a 32-bit int)",
    )
    need((c.tls_cert is None) == (c.tls_key is None), "tls_cert and tls_key must be given together")
    need(c.tls_client_ca is None or c.tls_cert is not None, "tls_client_ca (mutual TLS) needs tls_cert and tls_key")
    need(c.max_beam_size >= 1 and c.max_output_length >= 1, "max_beam_size and max_output_length must be >= 1")
    need(1 <= c.beam_size <= c.max_beam_size, f"beam_size must be in 1..max_beam_size ({c.max_beam_size})")
    need(1 <= c.num_hypotheses <= c.beam_size, f"num_hypotheses must be in 1..beam_size ({c.beam_size})")
    need(
        0 <= c.length_penalty <= c.max_length_penalty <= 100,
        f"length_penalty must be in 0..max_length_penalty ({c.max_length_penalty}), and max_length_penalty <= 100",
    )
    need(
        1 <= c.max_length <= c.max_output_length, f"max_length must be in 1..max_output_length ({c.max_output_length})"
    )
    need(
        0 < c.stream_stall_timeout_s <= MAX_DRAIN_TIMEOUT_S,
        f"stream_stall_timeout_s must be in (0, {MAX_DRAIN_TIMEOUT_S:g}]",
    )
    need(0 <= c.drain_timeout_s <= MAX_DRAIN_TIMEOUT_S, f"drain_timeout_s must be in 0..{MAX_DRAIN_TIMEOUT_S:g}")
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    return config


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (``--max-batch-size``...), defaulting to None so that unset flags do not override."""
    parser.add_argument(
        "--config", type=Path, default=None, metavar="FILE", help=f"TOML file of settings (or ${CONFIG_ENV})"
    )
    for name, spec in FIELDS.items():
        kind = _kind(name)
        help_text = f"{spec.metadata['help']} [env {env_name(name)}; default {spec.default}]"
        if kind is bool:
            parser.add_argument(flag_name(name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            metavar = ("DIR" if name in ("model", "model_repository") else "FILE") if kind is Path else None
            parser.add_argument(
                flag_name(name), type=kind, default=None, metavar=metavar, choices=CHOICES.get(name), help=help_text
            )


@dataclass(frozen=True)
class LoadedConfig:
    config: ServerConfig
    sources: dict[str, str]  # setting -> "file", "env" or "flag", for the settings not left at their default
    warnings: list[str]


def load_config(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> LoadedConfig:
    """Merge the layers (``flags`` holds parsed flag values, None meaning "not given") and validate."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if k in FIELDS and v is not None}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = config_file or (Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None)
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((f"file {path}", read_toml(path)))
    env_values, unknown_env = read_env(environ)
    layers += [("env", env_values), ("flag", {k: _coerce(k, v, "flag") for k, v in flags.items()})]
    for source, layer in layers:
        values.update(layer)
        sources.update(dict.fromkeys(layer, source))
    warnings = [f"ignoring unknown environment variable {key}" for key in unknown_env]
    return LoadedConfig(validate(ServerConfig(**values)), sources, warnings)


def resolve_model_dir(model: Path | None) -> Path:
    """``model`` itself, or the shipped fp32 demo export; ConfigError when neither is there."""
    if model is not None:
        return Path(model)
    demo = demo_export("fp32")
    if not (demo / MANIFEST).is_file():
        raise ConfigError(
            f"no --model given and no exported demo model at {demo}; export one with `nmtserve export` or pass --model"
        )
    return demo

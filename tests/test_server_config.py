"""Server configuration: precedence (defaults < TOML < NMTSERVE_* < flags), validation, flags, demo model lookup."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from nmtserve.engine.model_dir import demo_export
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.config import ConfigError, ServerConfig, add_flags, engine_plan, load_config, resolve_model_dir


def parse(*argv: str) -> dict:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return vars(parser.parse_args(list(argv)))


def test_defaults_serve_the_demo_on_the_documented_ports() -> None:
    config = load_config({}, environ={}).config
    assert (config.host, config.port, config.metrics_port, config.model) == ("127.0.0.1", 50051, 9090, None)
    assert config.batching == "auto"  # continuous for ragged exports, request-level otherwise: docs/benchmarks.md


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text('port = 6000\nmax_batch_size = 8\nbatching = "request"\nmodel = "models/demo"\nspin = false\n')
    environ = {"NMTSERVE_PORT": "7000", "NMTSERVE_MAX_QUEUE_DELAY_MS": "1.5", "NMTSERVE_UNRELATED": "x"}
    loaded = load_config(parse("--port", "8000", "--no-warmup", "--config", str(toml)), environ, config_file=toml)
    config = loaded.config
    assert config.port == 8000 and config.max_batch_size == 8 and config.max_queue_delay_ms == 1.5
    assert config.batching == "request" and config.spin is False and config.warmup is False
    assert config.model == tmp_path / "models/demo"  # relative to the file
    assert loaded.sources["port"] == "flag" and loaded.sources["max_queue_delay_ms"] == "env"
    assert loaded.sources["max_batch_size"].startswith("file")
    assert loaded.warnings == ["ignoring unknown environment variable NMTSERVE_UNRELATED"]


def test_config_file_from_environment(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text("metrics_port = 9999\n")
    assert load_config({}, {"NMTSERVE_CONFIG": str(toml)}).config.metrics_port == 9999


@pytest.mark.parametrize(
    ("flags", "environ", "toml", "message"),
    [
        ({}, {}, "max_batch_sise = 3\n", "unknown setting(s) max_batch_sise"),
        ({}, {}, 'port = "x"\n', "expected an integer"),
        ({}, {"NMTSERVE_SPIN": "maybe"}, None, "not a valid bool"),
        ({"beam_size": 3, "num_hypotheses": 4}, {}, None, "num_hypotheses must be in 1..beam_size"),
        ({"max_batch_tokens": 100}, {}, None, "max_batch_tokens (100) must hold one longest text"),
        ({"port": 70000}, {}, None, "port must be in 0..65535"),
        ({"max_queue_delay_ms": -1.0}, {}, None, "max_queue_delay_ms must be >= 0"),
    ],
)
def test_invalid_settings_are_refused(tmp_path: Path, flags: dict, environ: dict, toml: str | None, message: str):
    path = None
    if toml is not None:
        path = tmp_path / "bad.toml"
        path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(flags, environ, path)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--max-queue-delay-ms", "inf"], {}, "max_queue_delay_ms must be a finite number"),
        (["--max-queue-delay-ms", "nan"], {}, "max_queue_delay_ms must be a finite number"),
        (["--max-queue-delay-ms", "1e9"], {}, "max_queue_delay_ms must be <= 1000"),
        ([], {"NMTSERVE_MAX_QUEUE_DELAY_MS": "inf"}, "max_queue_delay_ms must be a finite number"),
        ([], {"NMTSERVE_DRAIN_TIMEOUT_S": "nan"}, "drain_timeout_s must be a finite number"),
        (["--join-fraction", "nan"], {}, "join_fraction must be a finite number"),
        (["--max-message-bytes", "2147483648"], {}, "max_message_bytes must be in 1024..2147483647"),
        (["--max-queue-size", "4294967296"], {}, "max_queue_size must be <= 4294967295 (uint32)"),
        (["--max-queue-tokens", "4294967296"], {}, "max_queue_tokens must be <= 4294967295 (uint32)"),
        (["--max-inflight-per-connection", "4294967296"], {}, "max_inflight_per_connection must be <= 4294967295"),
        (["--threads", "100000"], {}, "threads must be in 0..256"),
        (["--engine-workers", "-1"], {}, "engine_workers must be in 0..256"),
        ([], {"NMTSERVE_ENGINE_WORKERS": "1000"}, "engine_workers must be in 0..256"),
        ([], {"NMTSERVE_INT8_KERNELS": "s8s8"}, "int8_kernels must be one of auto, u8s8, u8u8, u8s7, not 's8s8'"),
    ],
)
def test_settings_that_would_break_the_server_are_refused(argv: list[str], environ: dict, message: str) -> None:
    """Each of these passed validation once and then broke the server (a spinning engine thread, starved
    requests, a traceback at start, GetModelInfo failing on uint32 overflow)."""
    with pytest.raises(ConfigError) as caught:
        load_config(parse(*argv), environ)
    assert message in str(caught.value)


def test_the_largest_valid_limits_fit_model_info() -> None:
    config = load_config(parse("--max-queue-size", "4294967295", "--max-queue-tokens", "4294967295"), {}).config
    limits = pb.Limits(max_queue_size=config.max_queue_size, max_queue_tokens=config.max_queue_tokens)
    assert pb.Limits.FromString(limits.SerializeToString()).max_queue_size == 4294967295


def test_bad_choice_flag_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit):
        parse("--batching", "sometimes")
    with pytest.raises(SystemExit):
        parse("--int8-kernels", "s8s8")
    assert load_config(parse("--int8-kernels", "u8u8"), {}).config.int8_kernels == "u8u8"


def test_model_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_model_dir(tmp_path) == tmp_path
    monkeypatch.setattr("nmtserve.server.config.demo_export", lambda precision: tmp_path / precision)
    with pytest.raises(ConfigError, match="no exported demo model at"):
        resolve_model_dir(None)
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "manifest.json").write_text("{}")
    assert resolve_model_dir(None) == tmp_path / "fp32"


def test_demo_export_lives_in_the_export_package() -> None:
    """The shipped demo export is found inside the installed nmtserve.export package, per precision."""
    import nmtserve.export

    assert demo_export("int8") == Path(nmtserve.export.__file__).parent / "demo" / "int8"


def test_as_dict_is_json_ready() -> None:
    import json

    assert json.loads(json.dumps(ServerConfig(model=Path("/m")).as_dict()))["model"] == "/m"


def test_serve_without_a_model_fails_before_binding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from nmtserve.server.app import serve

    monkeypatch.setattr("nmtserve.server.config.demo_export", lambda precision: tmp_path / "nothing")
    assert asyncio.run(serve(ServerConfig(port=0, metrics_port=0))) == 2


@pytest.mark.parametrize(
    ("settings", "cpus", "plan"),
    [
        ({}, 1, (1, 1)),
        ({}, 2, (2, 1)),  # two batches side by side, not one split over two cores
        ({}, 3, (3, 1)),
        ({}, 16, (4, 4)),  # at most MAX_AUTO_WORKERS threads, the CPUs shared out among them
        ({}, 64, (4, 8)),  # at most 8 intra-op threads each
        ({"device": "cuda"}, 16, (1, 8)),  # one stream of steps on a GPU
        ({"engine_workers": 1}, 2, (1, 2)),  # one engine thread takes every CPU, as before engine_workers
        ({"engine_workers": 3, "threads": 2}, 2, (3, 2)),  # explicit settings are taken as given
    ],
)
def test_engine_plan_shares_the_cpus_among_engine_threads(settings: dict, cpus: int, plan: tuple[int, int]) -> None:
    assert engine_plan(ServerConfig(**settings), cpus=cpus) == plan

"""Security against live servers on the demo model: TLS, mutual TLS, bearer tokens (health exempt), the metrics
port apart from gRPC, no request text in logs, nothing unpickled on the serving path, the model directory verified
against its manifest before anything is loaded.

Certificates are generated per test session (throwaway CA, server and client certificates for 127.0.0.1).
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import http.client
import io
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_server_process import NO_TORCH_MAIN

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.loadtest.client import TranslatorClient
from nmtserve.loadtest.serverproc import ServerProcess
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server import security
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ConfigError, ServerConfig, load_config

TEXTS = ["The package contains the documentation.", "Open the file menu."]


def offline(engine: Engine, texts: list[str]) -> list[str]:
    return [nbest[0].text for nbest in engine.translate(texts, DecodingOptions())]


def config(model: Path, **overrides) -> ServerConfig:
    settings = dict(model=model, port=0, metrics_port=0, threads=1, warmup=False)
    return ServerConfig(**(settings | overrides))


# -- throwaway certificates ---------------------------------------------------------------------------------------


@dataclass
class Pem:
    cert: Path
    key: Path


def _write(directory: Path, name: str, key, cert: x509.Certificate) -> Pem:
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pem(cert_path, key_path)


def _certificate(subject: str, key, issuer: x509.Name | None, issuer_key, ca: bool, usage=None, san=None):
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_ca(directory: Path, name: str) -> tuple[Pem, object, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(name, key, None, None, ca=True)
    return _write(directory, name, key, cert), key, cert


def issue(directory: Path, name: str, ca_key, ca_cert: x509.Certificate, server: bool) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")] if server else None
    cert = _certificate(name, key, ca_cert.subject, ca_key, ca=False, usage=usage, san=san)
    return _write(directory, name, key, cert)


@dataclass
class Pki:
    ca: Pem  # signs the server and the good client
    server: Pem
    client: Pem
    rogue_ca: Pem  # an unrelated CA and a client certificate it signed
    rogue_client: Pem


def make_pki(directory: Path) -> Pki:
    """A CA, a server and a client certificate it signed, and a rogue CA's client certificate, under ``directory``."""
    ca, ca_key, ca_cert = make_ca(directory, "ca")
    rogue, rogue_key, rogue_cert = make_ca(directory, "rogue-ca")
    return Pki(
        ca=ca,
        server=issue(directory, "server", ca_key, ca_cert, server=True),
        client=issue(directory, "client", ca_key, ca_cert, server=False),
        rogue_ca=rogue,
        rogue_client=issue(directory, "rogue-client", rogue_key, rogue_cert, server=False),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def fails(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


# -- TLS and mutual TLS -------------------------------------------------------------------------------------------


def test_tls(demo_model_dir: Path, demo_engine: Engine, pki: Pki) -> None:
    cfg = config(demo_model_dir, tls_cert=pki.server.cert, tls_key=pki.server.key)
    with BackgroundServer(cfg) as server:
        with TranslatorClient(server.address, tls_ca=pki.ca.cert, timeout=30) as client:
            assert client.health() == "SERVING"
            assert client.translate_texts(TEXTS) == offline(demo_engine, TEXTS)
        with TranslatorClient(server.address, timeout=10) as plaintext:
            assert fails(lambda: plaintext.translate_texts(TEXTS)) == grpc.StatusCode.UNAVAILABLE
        with TranslatorClient(server.address, tls_ca=pki.rogue_ca.cert, timeout=10) as untrusting:
            assert fails(lambda: untrusting.translate_texts(TEXTS)) == grpc.StatusCode.UNAVAILABLE
        # The metrics endpoint stays plain HTTP on its own port.
        assert b"nmtserve_requests_total" in urllib.request.urlopen(server.metrics_url, timeout=10).read()


def test_mutual_tls(demo_model_dir: Path, demo_engine: Engine, pki: Pki) -> None:
    cfg = config(demo_model_dir, tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca.cert)
    with BackgroundServer(cfg) as server:
        good = dict(tls_ca=pki.ca.cert, tls_cert=pki.client.cert, tls_key=pki.client.key)
        with TranslatorClient(server.address, timeout=30, **good) as client:
            assert client.translate_texts(TEXTS) == offline(demo_engine, TEXTS)
        for credentials in (
            dict(tls_ca=pki.ca.cert),  # no client certificate
            dict(tls_ca=pki.ca.cert, tls_cert=pki.rogue_client.cert, tls_key=pki.rogue_client.key),
        ):
            with TranslatorClient(server.address, timeout=10, **credentials) as client:
                assert fails(lambda c=client: c.translate_texts(TEXTS)) == grpc.StatusCode.UNAVAILABLE
                assert fails(lambda c=client: c.health()) == grpc.StatusCode.UNAVAILABLE


def test_tls_settings_are_checked_before_serving(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key must be given together"):
        load_config({"tls_cert": pki.server.cert}, environ={})
    with pytest.raises(ConfigError, match="needs tls_cert"):
        load_config({"tls_client_ca": pki.ca.cert}, environ={})
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("not a certificate")
    cfg = config(tmp_path, tls_cert=not_pem, tls_key=pki.server.key)
    with pytest.raises(ConfigError, match=r"tls_cert: .* is not a PEM file"):
        security.server_credentials(cfg)
    with pytest.raises(ConfigError, match="tls_key: cannot read"):
        security.server_credentials(config(tmp_path, tls_cert=pki.server.cert, tls_key=tmp_path / "missing.key"))


# -- bearer tokens --------------------------------------------------------------------------------------------------

TOKENS = ["s3cret-token-one", "second-token-for-rotation"]


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text("# accepted tokens\n" + "\n".join(TOKENS) + "\n\n")
    return path


@pytest.fixture(scope="module")
def token_server(demo_model_dir: Path, token_file: Path):
    with BackgroundServer(config(demo_model_dir, auth_token_file=token_file)) as server:
        yield server


def test_bearer_token_is_required_except_for_health(token_server, demo_engine: Engine, metrics_of) -> None:
    address = token_server.address
    for token in TOKENS:
        with TranslatorClient(address, token=token, timeout=30) as client:
            assert client.translate_texts(TEXTS) == offline(demo_engine, TEXTS)
            assert client.model_info().name
            [event] = list(client.stream([pb.TranslateRequest(texts=TEXTS[:1])]))
            assert event.translations
    for token in (None, "wrong", TOKENS[0] + "x", TOKENS[0][:-1]):
        with TranslatorClient(address, token=token, timeout=30) as client:
            assert client.health() == "SERVING"  # health is exempt
            client.wait_until_serving(timeout=10)
            assert fails(lambda c=client: c.translate_texts(TEXTS)) == grpc.StatusCode.UNAUTHENTICATED
            assert fails(lambda c=client: c.model_info()) == grpc.StatusCode.UNAUTHENTICATED
            stream = lambda c=client: list(c.stream([pb.TranslateRequest(texts=TEXTS[:1])]))  # noqa: E731
            assert fails(stream) == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(address) as channel:
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        listing = [reflection_pb2.ServerReflectionRequest(list_services="")]
        assert fails(lambda: list(reflect(iter(listing), timeout=10))) == grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", f"bearer {TOKENS[1]}"),)  # the scheme is case-insensitive
        [answer] = list(reflect(iter(listing), timeout=10, metadata=metadata))
        assert "nmtserve.v1.Translator" in [s.name for s in answer.list_services_response.service]
        reflect_v1 = channel.stream_stream(  # the v1 protocol: same messages, same gate
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        assert fails(lambda: list(reflect_v1(iter(listing), timeout=10))) == grpc.StatusCode.UNAUTHENTICATED
        [answer] = list(reflect_v1(iter(listing), timeout=10, metadata=metadata))
        assert "nmtserve.v1.Translator" in [s.name for s in answer.list_services_response.service]
        unknown = channel.unary_unary("/nmtserve.v1.Translator/NoSuchMethod")
        assert fails(lambda: unknown(b"", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED  # existence not revealed
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
    samples = metrics_of(token_server.metrics_url)
    refused = {k: v for k, v in samples.items() if k[0] == "nmtserve_unauthenticated_requests_total"}
    assert refused[("nmtserve_unauthenticated_requests_total", (("method", "Translate"), ("reason", "missing")))] == 1
    assert refused[("nmtserve_unauthenticated_requests_total", (("method", "Translate"), ("reason", "invalid")))] == 3
    ok = samples[("nmtserve_requests_total", (("code", "OK"), ("method", "Translate")))]
    assert ok == 2, "refused calls never reached the service"


def test_made_up_methods_share_one_metric_series(token_server, metrics_of) -> None:
    """An unauthenticated client calling 200 made-up method paths made 200 series of
    nmtserve_unauthenticated_requests_total (the label was the path's last part): memory and the /metrics page grew
    with every new name (500 names of 200 characters: 300 KB of /metrics). Methods the server does not have now
    count under ``method="unknown"``; real methods keep their names."""
    before = metrics_of(token_server.metrics_url)
    with grpc.insecure_channel(token_server.address) as channel:
        for i in range(200):
            call = channel.unary_unary(f"/nmtserve.v1.Translator/Made{i}Up" + "x" * 100)
            assert fails(lambda c=call: c(b"", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        for path in ("/no.such.Service/Translate", "/x"):
            call = channel.unary_unary(path)
            assert fails(lambda c=call: c(b"", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        translate = channel.unary_unary("/nmtserve.v1.Translator/Translate")
        assert fails(lambda: translate(b"", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    after = metrics_of(token_server.metrics_url)
    family = "nmtserve_unauthenticated_requests_total"
    methods = {dict(labels)["method"] for name, labels in after if name == family}
    assert methods <= {"unknown", "Translate", "TranslateStream", "GetModelInfo", "ServerReflectionInfo"}, methods
    key = (family, (("method", "unknown"), ("reason", "missing")))
    assert after[key] - before.get(key, 0) == 202
    key = (family, (("method", "Translate"), ("reason", "missing")))
    assert after[key] - before.get(key, 0) == 1


def test_token_comparison_takes_no_shortcut(monkeypatch) -> None:
    """Constant time by construction: every accepted token is compared, always through ``hmac.compare_digest``
    on fixed-size digests, whether the candidate matches the first token, the last or none."""
    accepted = [hashlib.sha256(t.encode()).digest() for t in ("a" * 40, "b", "c" * 7)]
    calls = []
    real = security.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    for candidate, expected in (("a" * 40, True), ("c" * 7, True), ("a" * 39, False), ("", False), ("x" * 999, False)):
        calls.clear()
        assert security.token_matches(candidate, accepted) is expected
        assert calls == [(32, 32)] * 3


def test_token_file_is_checked(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="lists no token"):
        security.load_tokens(empty)
    with pytest.raises(ConfigError, match="cannot read"):
        security.load_tokens(tmp_path / "missing")
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    with pytest.raises(ConfigError, match="may not contain spaces"):
        security.load_tokens(spaced)


def test_cli_translate_with_tls_and_token(
    demo_model_dir: Path, demo_engine: Engine, pki: Pki, token_file: Path, monkeypatch, capsys
) -> None:
    from nmtserve.cli.main import main

    cfg = config(demo_model_dir, tls_cert=pki.server.cert, tls_key=pki.server.key, auth_token_file=token_file)
    client_token = token_file.parent / "client-token"
    client_token.write_text(TOKENS[1] + "\n")
    with BackgroundServer(cfg) as server:
        argv = ["translate", "--server", server.address, "--tls-ca", str(pki.ca.cert)]
        monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(TEXTS) + "\n"))
        assert main([*argv, "--token-file", str(client_token)]) == 0
        assert capsys.readouterr().out.splitlines() == offline(demo_engine, TEXTS)
        monkeypatch.setattr("sys.stdin", io.StringIO(TEXTS[0] + "\n"))
        monkeypatch.setenv("NMTSERVE_TOKEN", TOKENS[0])
        assert main(argv) == 0
        assert capsys.readouterr().out.splitlines() == offline(demo_engine, TEXTS[:1])
        monkeypatch.delenv("NMTSERVE_TOKEN")
        monkeypatch.setattr("sys.stdin", io.StringIO(TEXTS[0] + "\n"))
        assert main(argv) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err


# -- the metrics port -------------------------------------------------------------------------------------------


def test_metrics_are_on_their_own_port_and_address(demo_model_dir: Path, token_file: Path) -> None:
    cfg = config(demo_model_dir, host="127.0.0.1", metrics_host="127.0.0.1", auth_token_file=token_file)
    with BackgroundServer(cfg) as server:
        endpoint = server.server._metrics_endpoint.server
        assert endpoint.server_address[0] == cfg.metrics_host and server.server.metrics_port != server.server.port
        assert b"nmtserve_model_info" in urllib.request.urlopen(server.metrics_url, timeout=10).read()  # no token
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):  # HTTP/2 frames, not HTTP
            urllib.request.urlopen(f"http://{server.address}/metrics", timeout=10).read()
    # Any other address may be configured (e.g. an internal interface), and the same port on another address.
    other = load_config({"metrics_host": "10.0.0.7", "metrics_port": 50051, "port": 50051}, environ={}).config
    assert other.metrics_host == "10.0.0.7"


# -- privacy: no request text in logs -------------------------------------------------------------------------------

FAILING_SERVE = """
import os, sys
from nmtserve.engine import DecodingBatch

FAIL = os.environ["NMTSERVE_TEST_FAIL"]
_step = DecodingBatch.step

def step(self):  # injected fault: every decode step raises while the file exists
    if os.path.exists(FAIL):
        raise RuntimeError("injected engine failure")
    return _step(self)

DecodingBatch.step = step
from nmtserve.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

MARKER = "Quixotically"


def test_no_request_text_in_logs(demo_model_dir: Path, tmp_path: Path) -> None:
    """At debug level, through every path a request can take (success, partials, bad input, deadline,
    cancellation, engine failure), the server's log never contains a request's text."""
    fail = tmp_path / "fail"
    env = dict(os.environ, NMTSERVE_TEST_FAIL=str(fail))
    flags = ("--threads", "1", "--log-level", "debug", "--max-input-tokens", "64", "--max-input-bytes", "300")
    secret = f"{MARKER} the package contains the documentation."
    server = ServerProcess(demo_model_dir, *flags, launcher=("-c", FAILING_SERVE), env=env)
    with server, TranslatorClient(server.address, timeout=60) as client:
        assert client.translate_texts([secret])
        assert list(client.stream([pb.TranslateRequest(texts=[secret], stream_partial=True, request_id=MARKER)]))
        bad_inputs = [[secret + "\x00"], [secret * 20], [secret] * 300, [" ".join(["a"] * 66 + [MARKER])]]
        for texts in bad_inputs:
            assert fails(lambda t=texts: client.translate(t)) == grpc.StatusCode.INVALID_ARGUMENT
        assert fails(lambda: client.translate([secret * 3], timeout=0.02)) == grpc.StatusCode.DEADLINE_EXCEEDED
        call = client.stub.Translate.future(pb.TranslateRequest(texts=[secret * 3]))
        call.cancel()
        fail.touch()
        assert fails(lambda: client.translate([secret])) == grpc.StatusCode.INTERNAL
        fail.unlink()
        assert client.translate_texts([secret])
    log = server.log_text()
    assert server.wait_for("configuration")["config"]["log_level"] == "debug"
    assert "injected engine failure" in log, "the log covered the failure path"
    assert MARKER not in log and MARKER.lower() not in log.lower()


# -- nothing unpickled, nothing loaded unverified --------------------------------------------------------------------

UNPICKLING = ("pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal")


def serving_modules() -> list[Path]:
    """The files of every nmtserve module that ``nmtserve serve`` imports (asked of a fresh interpreter)."""
    code = (
        "import sys, nmtserve.server.app, nmtserve.server.service, nmtserve.server.background, "
        "nmtserve.loadtest.client, nmtserve.cli.main as m\n"
        "m.build_parser()\n"
        "print('\\n'.join(sorted(getattr(mod, '__file__', None) or '' for name, mod in sys.modules.items() "
        "if name.startswith('nmtserve'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return [Path(line) for line in result.stdout.split() if line.endswith(".py")]


def test_serving_path_source_never_unpickles() -> None:
    files = serving_modules()
    names = {f.name for f in files}
    assert {"app.py", "service.py", "runtime.py", "model_dir.py", "tokenizer.py"} <= names
    problems = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                problems += [f"{path}: imports {m}" for m in modules if m.split(".")[0] in UNPICKLING]
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = ast.unparse(node.func)
                if target in ("torch.load", "torch.jit.load"):
                    problems.append(f"{path}: calls {target}")
                for keyword in node.keywords:
                    if keyword.arg == "allow_pickle" and not (
                        isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                    ):
                        problems.append(f"{path}: {target}(allow_pickle=...)")
    assert not problems, problems


# The serving entry point of test_server_process (torch refused), with unpickling refused as well.
NO_UNPICKLING_SERVE = (
    """
import pickle, _pickle

def refuse(*args, **kwargs):
    raise RuntimeError("unpickling on the serving path")

class Refused(pickle.Unpickler):
    def __init__(self, *args, **kwargs):
        refuse()

for module in (pickle, _pickle):
    module.load = module.loads = refuse
    module.Unpickler = Refused
"""
    + NO_TORCH_MAIN
)


def test_serving_never_unpickles_at_run_time(demo_model_dir: Path, demo_engine: Engine) -> None:
    """The whole life of a server (load with verification, warm-up, every RPC, drain) with unpickling and torch
    made impossible in its process."""
    server = ServerProcess(demo_model_dir, "--threads", "1", launcher=("-c", NO_UNPICKLING_SERVE))
    with server, TranslatorClient(server.address, timeout=60) as client:
        assert client.translate_texts(TEXTS) == offline(demo_engine, TEXTS)
        assert list(client.stream([pb.TranslateRequest(texts=TEXTS, stream_partial=True)]))
        assert client.model_info().name
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    assert "unpickling on the serving path" not in server.log_text()


def test_model_is_verified_before_anything_is_loaded(demo_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A file that differs from the manifest's sha256 stops the load before a single onnxruntime session or the
    tokenizer is created; the server stays NOT_SERVING."""
    import onnxruntime

    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    path = model / "decoder_step.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    created = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: created.append(a) or real(*a, **k))
    server = BackgroundServer(config(model), load=False).start()
    try:
        assert server.call(server.server.try_load()) is False
        assert created == [] and server.server.engine is None
        with TranslatorClient(server.address, timeout=10) as client:
            assert client.health() == "NOT_SERVING"
            assert fails(lambda: client.translate(TEXTS)) == grpc.StatusCode.UNAVAILABLE
        shutil.copyfile(demo_model_dir / "decoder_step.onnx", path)  # repaired: the same directory loads
        assert server.call(server.server.try_load()) is True and len(created) >= 5
    finally:
        server.stop()

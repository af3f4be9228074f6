"""Many models in one server: a model repository, routing by model or language pair, ListModels, admin calls,
broken entries and a hot swap under load, on real servers (127.0.0.1, free ports) with real ONNX Runtime sessions.

Models: the demo fp32 and int8 exports as versions 1 and 2 of ``demo`` (en->de), and the tiny test export
renamed ``rev`` with a de->en manifest (its manifest rewritten with ``write_manifest``, so its checksums stay
valid). Every answer is checked against an offline engine of the version the server says answered it
(the ``nmtserve-model`` trailing metadata).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import scrape_metrics

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.model_dir import MANIFEST, demo_export, write_manifest
from nmtserve.export.testing import tiny_export
from nmtserve.loadtest.client import TranslatorClient
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ConfigError, load_config
from nmtserve.server.repository import DirectoryRepository, version_key
from nmtserve.server.service import MODEL_METADATA_KEY

DEMO_TEXTS = ["The package contains the documentation.", "The server is running.", "The driver is missing."]
REV_TEXTS = ["the cat sat on the mat", "open the file and save it"]
READY = pb.MODEL_STATE_READY
SCORE_TOLERANCE = 1e-4  # a served score equals its reference's within this


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` holds (a bound against hanging, not a timing assertion)."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"{what} not reached within {timeout} s"
        time.sleep(0.05)


def renamed_copy(source: Path, target: Path, name: str, languages: tuple[str, str]) -> Path:
    """A copy of an export with another name and language pair; the manifest's digests stay valid."""
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest.pop("files")
    manifest["model"]["name"] = name
    manifest["languages"] = {"source": languages[0], "target": languages[1]}
    write_manifest(target, manifest)
    return target


@pytest.fixture(scope="module")
def rev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny = tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")
    return renamed_copy(tiny, tmp_path_factory.mktemp("rev") / "rev", "rev", ("de", "en"))


@pytest.fixture(scope="module")
def engines(rev_dir: Path) -> dict[str, Engine]:
    """Offline references: the served answers must equal theirs."""
    return {
        "demo/1": Engine.load(demo_export("fp32"), threads=1),
        "demo/2": Engine.load(demo_export("int8"), threads=1),
        "rev/1": Engine.load(rev_dir, threads=1),
    }


def make_repository(root: Path, rev_dir: Path, demo_versions: tuple[str, ...] = ("fp32",)) -> Path:
    (root / "demo").mkdir(parents=True)
    for number, precision in enumerate(demo_versions, 1):
        os.symlink(demo_export(precision), root / "demo" / str(number))
    (root / "rev").mkdir()
    os.symlink(rev_dir, root / "rev" / "1")
    return root


def server_config(repository: Path, **overrides):
    settings = dict(
        model_repository=repository,
        default_model="demo",
        port=0,
        metrics_port=0,
        threads=1,
        warmup=False,
        max_queue_delay_ms=5.0,
        repository_poll_s=0.0,
    )
    return load_config(settings | overrides, environ={}).config


def translate_with_model(stub, request: pb.TranslateRequest) -> tuple[list[tuple[str, float]], str]:
    """(text, score) of each answer and the ``model/version`` that answered it."""
    response, call = stub.Translate.with_call(request, timeout=120)
    served = dict(call.trailing_metadata())[MODEL_METADATA_KEY]
    return [(t.hypotheses[0].text, t.hypotheses[0].score) for t in response.translations], served


def reference(engine: Engine, texts: list[str]) -> list[tuple[str, float]]:
    return [(nbest[0].text, nbest[0].score) for nbest in engine.translate(texts, DecodingOptions())]


def assert_matches(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [text for text, _ in got] == [text for text, _ in want]
    for (_, got_score), (_, want_score) in zip(got, want, strict=True):
        assert got_score == pytest.approx(want_score, abs=SCORE_TOLERANCE)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, rev_dir: Path):
    repository = make_repository(tmp_path_factory.mktemp("repo"), rev_dir)
    with BackgroundServer(server_config(repository)) as running:
        yield running


@pytest.fixture(scope="module")
def stub(served: BackgroundServer):
    with grpc.insecure_channel(served.address) as channel:
        yield pb_grpc.TranslatorStub(channel)


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


# -- the repository on disk and its settings ----------------------------------------------------------------------


def test_scan_orders_versions_and_ignores_dot_names(tmp_path: Path, rev_dir: Path) -> None:
    (tmp_path / "m").mkdir()
    for version in ("2", "10", ".tmp-11", "1"):
        os.symlink(rev_dir, tmp_path / "m" / version)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "empty").mkdir()
    models = DirectoryRepository(tmp_path).scan()
    assert list(models) == ["m"]
    assert [v.version for v in models["m"].versions] == ["1", "2", "10"] and models["m"].latest.version == "10"
    assert models["m"].latest.languages == ("de", "en")
    assert sorted(["b", "a", "3", "20"], key=version_key) == ["a", "b", "3", "20"]


def test_settings_model_repository_from_env_and_exclusive_with_model(tmp_path: Path) -> None:
    loaded = load_config({}, environ={"NMTSERVE_MODEL_REPOSITORY": str(tmp_path), "NMTSERVE_MODELS": "a,b"})
    assert loaded.config.model_repository == tmp_path and loaded.config.models == "a,b"
    with pytest.raises(ConfigError, match="model and model_repository are exclusive"):
        load_config({"model": tmp_path, "model_repository": tmp_path}, environ={})
    with pytest.raises(ConfigError, match="need model_repository"):
        load_config({"default_model": "a"}, environ={})


# -- routing, ListModels, GetModelInfo, health ----------------------------------------------------------------------


def test_routing_by_name_by_pair_and_default(stub, engines: dict[str, Engine]) -> None:
    cases = [
        (pb.TranslateRequest(texts=DEMO_TEXTS), "demo/1", DEMO_TEXTS),  # the default model
        (pb.TranslateRequest(texts=REV_TEXTS, model="rev"), "rev/1", REV_TEXTS),
        (pb.TranslateRequest(texts=REV_TEXTS, model="rev", model_version="1"), "rev/1", REV_TEXTS),
        (pb.TranslateRequest(texts=REV_TEXTS, source_language="de", target_language="en"), "rev/1", REV_TEXTS),
        (pb.TranslateRequest(texts=REV_TEXTS, target_language="en"), "rev/1", REV_TEXTS),
        (pb.TranslateRequest(texts=DEMO_TEXTS, source_language="en"), "demo/1", DEMO_TEXTS),
    ]
    for request, version, texts in cases:
        got, answered_by = translate_with_model(stub, request)
        assert answered_by == version, request
        assert_matches(got, reference(engines[version], texts))


def test_one_stream_carries_requests_for_several_models(stub, engines: dict[str, Engine]) -> None:
    requests = [
        pb.TranslateRequest(texts=DEMO_TEXTS, request_id="demo"),
        pb.TranslateRequest(texts=REV_TEXTS, request_id="rev", model="rev"),
        pb.TranslateRequest(texts=["x"], request_id="nope", model="nope"),  # in-band NOT_FOUND, the stream goes on
    ]
    answers = {response.request_id: response for response in stub.TranslateStream(iter(requests), timeout=120)}
    assert answers["nope"].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    for name, texts in (("demo", DEMO_TEXTS), ("rev", REV_TEXTS)):
        got = [(t.hypotheses[0].text, t.hypotheses[0].score) for t in answers[name].translations]
        assert_matches(got, reference(engines[f"{name}/1"], texts))


def test_every_model_has_its_own_series(stub, served: BackgroundServer) -> None:
    stub.Translate(pb.TranslateRequest(texts=REV_TEXTS, model="rev"), timeout=60)
    samples = scrape_metrics(served.metrics_url, by_model=True)
    for model in ("demo", "rev"):
        assert samples[("nmtserve_running_sentences", (("model", model), ("version", "1")))] == 0
        assert (
            samples[
                ("nmtserve_model_info", (("device", "cpu"), ("name", model), ("precision", "fp32"), ("version", "1")))
            ]
            == 1
        )
    rev_ok = ("nmtserve_requests_total", (("code", "OK"), ("method", "Translate"), ("model", "rev")))
    assert samples[rev_ok] >= 1
    assert samples[("nmtserve_tokens_total", (("direction", "output"), ("model", "rev"), ("version", "1")))] > 0


def test_list_models_and_model_info(stub, served: BackgroundServer) -> None:
    listing = stub.ListModels(pb.ListModelsRequest())
    assert listing.default_model == "demo" and [m.name for m in listing.models] == ["demo", "rev"]
    demo, rev = listing.models
    assert demo.is_default and not rev.is_default
    assert (demo.source_language, demo.target_language, rev.source_language, rev.target_language) == (
        "en",
        "de",
        "de",
        "en",
    )
    for model in (demo, rev):
        assert model.serving_version == "1" and [v.version for v in model.versions] == ["1"]
        version = model.versions[0]
        assert version.state == READY and version.serving and version.precision == "fp32" and version.device == "cpu"
        assert version.resident_bytes > 0  # its C heap's growth across the load, and at least its files
    assert demo.versions[0].resident_bytes > rev.versions[0].resident_bytes  # 50 MB of weights against < 1 MB
    info = stub.GetModelInfo(pb.GetModelInfoRequest(model="rev"))
    assert (info.name, info.version, info.source_language, info.target_language) == ("rev", "1", "de", "en")
    assert info.state == READY and info.serving and not info.is_default and list(info.versions) == ["1"]
    default = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert default.name == "demo" and default.is_default and default.limits.max_queue_size > 0
    with TranslatorClient(served.address) as client:
        assert client.health() == "SERVING" and client.health("nmtserve.v1.Translator") == "SERVING"
        assert client.health("nmtserve.v1.Translator/demo") == client.health("nmtserve.v1.Translator/rev") == "SERVING"


def test_bad_model_requests_get_clear_codes_and_the_server_keeps_serving(stub, served: BackgroundServer) -> None:
    code, message = code_of(lambda: stub.Translate(pb.TranslateRequest(texts=["x"], model="nope"), timeout=30))
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in message and "demo, rev" in message
    code, message = code_of(
        lambda: stub.Translate(pb.TranslateRequest(texts=["x"], model="demo", model_version="7"), timeout=30)
    )
    assert code == grpc.StatusCode.NOT_FOUND and "'7'" in message and "it has: 1" in message
    code, message = code_of(
        lambda: stub.Translate(pb.TranslateRequest(texts=["x"], source_language="fr", target_language="it"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "fr->it" in message
    assert "en->de (demo)" in message and "de->en (rev)" in message
    code, message = code_of(lambda: stub.GetModelInfo(pb.GetModelInfoRequest(model="nope")))
    assert code == grpc.StatusCode.NOT_FOUND and "demo, rev" in message
    # a model's own checks still apply once it is chosen by name
    code, message = code_of(lambda: stub.Translate(pb.TranslateRequest(texts=["x"], model="rev", target_language="de")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "de->en only" in message
    with grpc.insecure_channel(served.address) as channel:
        admin = pb_grpc.AdminStub(channel)
        code, message = code_of(lambda: admin.SetDefaultModel(pb.SetDefaultModelRequest(model="rev")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "admin_token_file" in message
    with TranslatorClient(served.address) as client:
        assert client.health() == "SERVING"
    assert stub.ListModels(pb.ListModelsRequest()).default_model == "demo"  # nothing changed


def test_http_languages_and_models_from_the_repository(tmp_path: Path, rev_dir: Path) -> None:
    import urllib.error
    import urllib.request

    repository = make_repository(tmp_path / "repo", rev_dir)
    with BackgroundServer(server_config(repository, http_port=free_port())) as running:
        base = f"http://127.0.0.1:{running.server.http_port}"

        def get(path: str):
            return json.loads(urllib.request.urlopen(base + path, timeout=30).read())

        languages = {entry["code"]: entry["targets"] for entry in get("/languages")}
        assert languages == {"en": ["de"], "de": ["en"]}
        listing = get("/v1/models")
        assert [m["name"] for m in listing["models"]] == ["demo", "rev"] and listing["default_model"] == "demo"
        assert get("/v1/models/rev")["source_language"] == "de"
        body = json.dumps({"texts": REV_TEXTS, "model": "rev"}).encode()
        request = urllib.request.Request(base + "/v1/translate", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.headers["X-Nmtserve-Model"] == "rev/1"
            assert len(json.loads(answer.read())["translations"]) == len(REV_TEXTS)
        body = json.dumps({"texts": ["x"], "model": "nope"}).encode()
        request = urllib.request.Request(base + "/v1/translate", body, {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=60)
        assert caught.value.code == 404 and "demo, rev" in json.loads(caught.value.read())["error"]
        form = json.dumps({"q": REV_TEXTS[0], "source": "de", "target": "en"}).encode()
        request = urllib.request.Request(base + "/translate", form, {"Content-Type": "application/json"})
        assert json.loads(urllib.request.urlopen(request, timeout=60).read())["translatedText"]


def test_http_a_model_or_version_that_is_not_loaded_is_400_not_500(tmp_path: Path, rev_dir: Path) -> None:
    """FAILED_PRECONDITION had no HTTP status and answered 500 (a server fault) for a client's choice of model."""
    import urllib.error
    import urllib.request

    repository = make_repository(tmp_path / "repo", rev_dir, demo_versions=("fp32", "int8"))
    config = server_config(repository, http_port=free_port(), models="demo")  # rev stays unloaded, demo serves 2
    with BackgroundServer(config) as running:
        base = f"http://127.0.0.1:{running.server.http_port}"

        def answer(path: str, body: dict | None = None) -> tuple[int, str]:
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(base + path, data, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as reply:
                    return reply.status, ""
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())["error"]

        for path, body in (
            ("/v1/translate", {"texts": REV_TEXTS, "model": "rev"}),
            ("/v1/translate/stream", {"texts": REV_TEXTS, "model": "rev"}),
            ("/v1/models/rev", None),
        ):
            status, message = answer(path, body)
            assert (status, "not loaded" in message and "LoadModel" in message) == (400, True), (path, message)
        status, message = answer("/v1/translate", {"texts": DEMO_TEXTS, "model": "demo", "model_version": "1"})
        assert status == 400 and "version '1' of model 'demo' is not loaded (serving: 2)" in message
        assert answer("/v1/models/demo?version=1")[0] == 400
        assert answer("/v1/translate", {"texts": DEMO_TEXTS, "model": "demo"}) == (200, "")


# -- admin calls ----------------------------------------------------------------------------------------------------


def test_admin_calls_need_the_admin_token_and_change_what_is_served(
    tmp_path: Path, rev_dir: Path, engines: dict[str, Engine]
) -> None:
    repository = make_repository(tmp_path / "repo", rev_dir)
    tokens = tmp_path / "admin-tokens"
    tokens.write_text("admin-secret\n")
    with (
        BackgroundServer(server_config(repository, admin_token_file=tokens)) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        admin, stub = pb_grpc.AdminStub(channel), pb_grpc.TranslatorStub(channel)
        good = (("authorization", "Bearer admin-secret"),)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            code, _ = code_of(
                lambda m=metadata: admin.SetDefaultModel(pb.SetDefaultModelRequest(model="rev"), metadata=m)
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED
        code, message = code_of(lambda: admin.UnloadModel(pb.UnloadModelRequest(model="demo"), metadata=good))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "default model" in message
        status = admin.SetDefaultModel(pb.SetDefaultModelRequest(model="rev"), metadata=good)
        assert status.name == "rev" and status.is_default
        got, answered_by = translate_with_model(stub, pb.TranslateRequest(texts=REV_TEXTS))
        assert answered_by == "rev/1"
        assert_matches(got, reference(engines["rev/1"], REV_TEXTS))
        status = admin.UnloadModel(pb.UnloadModelRequest(model="demo"), metadata=good)
        assert [v.state for v in status.versions] == [pb.MODEL_STATE_UNLOADED] and not status.serving_version
        series = scrape_metrics(running.metrics_url, by_model=True)
        assert not [key for key in series if ("model", "demo") in key[1] or ("name", "demo") in key[1]]
        code, message = code_of(lambda: stub.Translate(pb.TranslateRequest(texts=["x"], model="demo")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "not loaded" in message
        status = admin.LoadModel(pb.LoadModelRequest(model="demo"), metadata=good)
        assert status.serving_version == "1" and status.versions[0].state == READY
        got, answered_by = translate_with_model(stub, pb.TranslateRequest(texts=DEMO_TEXTS, model="demo"))
        assert answered_by == "demo/1"
        assert_matches(got, reference(engines["demo/1"], DEMO_TEXTS))
        code, message = code_of(lambda: admin.LoadModel(pb.LoadModelRequest(model="nope"), metadata=good))
        assert code == grpc.StatusCode.NOT_FOUND and "demo, rev" in message
        with TranslatorClient(running.address) as client:
            assert client.health() == "SERVING"


# -- broken entries and the memory budget ---------------------------------------------------------------------------


def break_manifest(directory: Path) -> None:
    (directory / MANIFEST).write_text((directory / MANIFEST).read_text()[:100])


def remove_tokenizer(directory: Path) -> None:
    (directory / "sentencepiece.model").unlink()


def wrong_format_version(directory: Path) -> None:
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["format_version"] = 999
    (directory / MANIFEST).write_text(json.dumps(manifest))


def test_broken_entries_fail_with_their_reason_while_the_others_serve(
    tmp_path: Path, rev_dir: Path, engines: dict[str, Engine]
) -> None:
    repository = tmp_path / "repo"
    (repository / "rev").mkdir(parents=True)
    os.symlink(rev_dir, repository / "rev" / "1")
    damages = {"bad-manifest": break_manifest, "no-tokenizer": remove_tokenizer, "future-format": wrong_format_version}
    for name, damage in damages.items():
        (repository / name).mkdir()
        damage(shutil.copytree(rev_dir, repository / name / "1"))
    running = BackgroundServer(server_config(repository, default_model="rev"), load=False).start()
    try:
        assert running.call(running.server.try_load())
        with grpc.insecure_channel(running.address) as channel, TranslatorClient(running.address) as client:
            stub = pb_grpc.TranslatorStub(channel)
            assert client.health() == "SERVING" and client.health("nmtserve.v1.Translator/rev") == "SERVING"
            models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}
            reasons = {
                "bad-manifest": "is not valid JSON",
                "no-tokenizer": "sentencepiece.model listed in the manifest is missing",
                "future-format": "v999",
            }
            for name, reason in reasons.items():
                version = models[name].versions[0]
                assert version.state == pb.MODEL_STATE_FAILED and reason in version.reason, (name, version)
                assert not models[name].serving_version
                assert client.health(f"nmtserve.v1.Translator/{name}") == "NOT_SERVING"
                code, message = code_of(lambda n=name: stub.Translate(pb.TranslateRequest(texts=["x"], model=n)))
                assert code == grpc.StatusCode.UNAVAILABLE and "failed to load" in message
            got, answered_by = translate_with_model(stub, pb.TranslateRequest(texts=REV_TEXTS))
            assert answered_by == "rev/1"
            assert_matches(got, reference(engines["rev/1"], REV_TEXTS))
    finally:
        running.stop()


def test_a_load_beyond_the_memory_budget_is_refused(tmp_path: Path, rev_dir: Path) -> None:
    repository = tmp_path / "repo"
    (repository / "rev").mkdir(parents=True)
    os.symlink(rev_dir, repository / "rev" / "1")
    running = BackgroundServer(server_config(repository, default_model="", memory_budget_bytes=1000), load=False)
    running.start()
    try:
        assert not running.call(running.server.try_load())
        with grpc.insecure_channel(running.address) as channel, TranslatorClient(running.address) as client:
            version = pb_grpc.TranslatorStub(channel).ListModels(pb.ListModelsRequest()).models[0].versions[0]
            assert version.state == pb.MODEL_STATE_FAILED
            assert "memory_budget_bytes 1000" in version.reason and "rev/1 needs about" in version.reason
            assert client.health() == "NOT_SERVING"
    finally:
        running.stop()


# -- hot reload -----------------------------------------------------------------------------------------------------


class Traffic:
    """Client threads sending requests without a model name, without pause; every answer kept with its version."""

    def __init__(self, address: str, threads: int = 2) -> None:
        self.address = address
        self.answers: list[tuple[int, str, list[tuple[str, float]]]] = []  # (text index, version, answer)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, offset: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.TranslatorStub(channel)
            i = offset
            while not self._stop.is_set():
                index = i % len(DEMO_TEXTS)
                try:
                    got, version = translate_with_model(stub, pb.TranslateRequest(texts=[DEMO_TEXTS[index]]))
                    self.answers.append((index, version, got))
                except grpc.RpcError as error:
                    self.errors.append(f"{error.code().name}: {error.details()}")
                i += 1

    def served_by(self, version: str) -> int:
        return sum(1 for _, v, _ in self.answers if v == version)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


def test_hot_swap_under_load_loses_nothing_and_answers_right(
    tmp_path: Path, rev_dir: Path, engines: dict[str, Engine]
) -> None:
    # int8 (dynamic quantisation) scales activations per batch, so its scores depend on the batch: sentences are
    # decoded alone here (max_batch_size 1), each reference too
    want = {v: [reference(engines[v], [text])[0] for text in DEMO_TEXTS] for v in ("demo/1", "demo/2")}
    # an answer from the wrong version must fail assert_matches: its score is more than twice the tolerance away
    # (how far int8 is from fp32 depends on the CPU's int8 kernels: 3e-4 on one AVX2 machine for the first text)
    differ = [abs(a[1] - b[1]) > 2 * SCORE_TOLERANCE for a, b in zip(want["demo/1"], want["demo/2"], strict=True)]
    assert all(differ), "fp32 and int8 scores must tell the versions apart"
    repository = make_repository(tmp_path / "repo", rev_dir)
    with (
        BackgroundServer(server_config(repository, repository_poll_s=0.2, max_batch_size=1)) as running,
        grpc.insecure_channel(running.address) as channel,
        Traffic(running.address) as traffic,
    ):
        stub = pb_grpc.TranslatorStub(channel)

        def versions() -> dict[str, int]:
            model = next(m for m in stub.ListModels(pb.ListModelsRequest()).models if m.name == "demo")
            return {v.version: v.state for v in model.versions}

        wait_for(lambda: traffic.served_by("demo/1") >= 5, what="answers from version 1")
        os.symlink(demo_export("int8"), repository / "demo" / ".tmp-2")  # written under a dot-name: ignored
        time.sleep(0.6)
        assert versions() == {"1": READY}
        os.rename(repository / "demo" / ".tmp-2", repository / "demo" / "2")
        wait_for(lambda: versions() == {"1": pb.MODEL_STATE_UNLOADED, "2": READY}, what="version 2 replacing 1")
        wait_for(lambda: traffic.served_by("demo/2") >= 5, what="answers from version 2")
        (repository / "demo" / "2").unlink()  # removed: version 1 is loaded again, then 2 unloaded
        wait_for(lambda: versions() == {"1": READY}, what="version 1 back after 2 was removed")
        count = len(traffic.answers)
        wait_for(lambda: len(traffic.answers) >= count + 5, what="answers after the removal")
    assert traffic.errors == []
    assert traffic.served_by("demo/2") >= 5
    last_version = [version for _, version, _ in traffic.answers][-1]
    assert last_version == "demo/1"
    for index, version, got in traffic.answers:
        assert_matches(got, [want[version][index]])


def test_per_model_settings_from_config_toml(tmp_path: Path, rev_dir: Path) -> None:
    repository = tmp_path / "repo"
    for name, settings in (("rev", "max_batch_size = 3\nmax_queue_size = 300\n"), ("typo", "port = 1\n")):
        (repository / name).mkdir(parents=True)
        os.symlink(rev_dir, repository / name / "1")
        (repository / name / "config.toml").write_text(settings)
    with (
        BackgroundServer(server_config(repository, default_model="rev")) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        stub = pb_grpc.TranslatorStub(channel)
        limits = stub.GetModelInfo(pb.GetModelInfoRequest(model="rev")).limits
        assert (limits.max_batch_size, limits.max_queue_size) == (3, 300)
        assert limits.max_texts_per_request == running.config.max_texts_per_request  # the server-wide one
        typo = next(m for m in stub.ListModels(pb.ListModelsRequest()).models if m.name == "typo").versions[0]
        assert typo.state == pb.MODEL_STATE_FAILED and "port cannot be set per model" in typo.reason


def test_admin_pins_an_older_version_beside_the_serving_one(tmp_path: Path, rev_dir: Path) -> None:
    repository = tmp_path / "repo"
    (repository / "rev").mkdir(parents=True)
    for version in ("1", "2"):
        os.symlink(rev_dir, repository / "rev" / version)
    tokens = tmp_path / "admin-tokens"
    tokens.write_text("admin-secret\n")
    good = (("authorization", "Bearer admin-secret"),)
    with (
        BackgroundServer(server_config(repository, default_model="rev", admin_token_file=tokens)) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        admin, stub = pb_grpc.AdminStub(channel), pb_grpc.TranslatorStub(channel)
        code, message = code_of(lambda: stub.Translate(pb.TranslateRequest(texts=["x"], model_version="1")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "Admin.LoadModel" in message
        status = admin.LoadModel(pb.LoadModelRequest(model="rev", model_version="1"), metadata=good)
        assert [(v.version, v.state, v.serving) for v in status.versions] == [("1", READY, False), ("2", READY, True)]
        assert translate_with_model(stub, pb.TranslateRequest(texts=REV_TEXTS, model_version="1"))[1] == "rev/1"
        assert translate_with_model(stub, pb.TranslateRequest(texts=REV_TEXTS))[1] == "rev/2"
        code, _ = code_of(
            lambda: admin.UnloadModel(pb.UnloadModelRequest(model="rev", model_version="2"), metadata=good)
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        status = admin.UnloadModel(pb.UnloadModelRequest(model="rev", model_version="1"), metadata=good)
        assert [(v.version, v.state) for v in status.versions] == [("1", pb.MODEL_STATE_UNLOADED), ("2", READY)]


def test_nmtserve_serve_with_a_model_repository(tmp_path: Path, rev_dir: Path) -> None:
    """The command line end to end: ``--model-repository``, ``--models``, ``--default-model``."""
    from nmtserve.loadtest.serverproc import ServerProcess

    repository = make_repository(tmp_path / "repo", rev_dir)
    flags = ("--model-repository", str(repository), "--models", "rev", "--default-model", "rev", "--threads", "1")
    with ServerProcess(None, *flags) as server, TranslatorClient(server.address) as client:
        record = server.wait_for("serving")
        assert record["model"] == "rev" and record["models"] == ["rev"]
        assert client.health("nmtserve.v1.Translator/rev") == "SERVING"
        listing = {m.name: [v.state for v in m.versions] for m in client.stub.ListModels(pb.ListModelsRequest()).models}
        assert listing == {"demo": [pb.MODEL_STATE_UNLOADED], "rev": [READY]}
        assert client.translate_texts(REV_TEXTS)


def test_a_loading_model_is_unavailable_with_a_retry_hint(tmp_path: Path, rev_dir: Path) -> None:
    """The registry's answer while a version loads (too brief to catch on a live server): UNAVAILABLE with
    ``grpc-retry-pushback-ms``, and the version that still serves goes on answering meanwhile."""
    from nmtserve.server.metrics import ServerMetrics
    from nmtserve.server.models import ModelRegistry, ModelVersion, State
    from nmtserve.server.validation import RETRY_PUSHBACK_KEY, Overloaded

    repository = make_repository(tmp_path / "repo", rev_dir)
    registry = ModelRegistry(server_config(repository), DirectoryRepository(repository), ServerMetrics())
    registry.entries = DirectoryRepository(repository).scan()
    registry.active, registry.default = {"demo", "rev"}, "demo"
    loading = ModelVersion(registry.entries["rev"].versions[0], State.LOADING)
    registry.loaded = {"rev": {"1": loading}}
    with pytest.raises(Overloaded) as caught:
        registry.acquire("rev", "")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and "still loading" in caught.value.message
    assert dict(caught.value.trailing_metadata())[RETRY_PUSHBACK_KEY] == "1000"
    with pytest.raises(Overloaded):
        registry.acquire("", "", source="de", target="en")  # routed by its pair to the loading model
    ready = ModelVersion(registry.entries["rev"].versions[0], State.READY)
    registry.loaded = {"rev": {"0": ready, "1": loading}}  # an older version still serving while 1 loads
    assert registry.acquire("rev", "") is ready and ready.inflight == 1
    registry.release(ready)
    assert ready.inflight == 0


def test_lru_unload_makes_room_under_the_memory_budget(tmp_path: Path, rev_dir: Path) -> None:
    """Budget 75 MiB: the tiny default model and the demo fp32 (52 MiB of files, about 57 MiB held once loaded) fit;
    the demo int8 (27 MiB of files) does not beside them. Without memory_lru_unload its load fails; with it, the
    idle fp32 model goes."""
    repository = tmp_path / "repo"
    for name, target in (("a-rev", rev_dir), ("b-fp32", demo_export("fp32")), ("c-int8", demo_export("int8"))):
        (repository / name).mkdir(parents=True)
        os.symlink(target, repository / name / "1")
    budget = 75 * 1024 * 1024
    for lru in (False, True):
        cfg = server_config(repository, default_model="a-rev", memory_budget_bytes=budget, memory_lru_unload=lru)
        with BackgroundServer(cfg) as running, grpc.insecure_channel(running.address) as channel:
            models = {
                m.name: m.versions[0] for m in pb_grpc.TranslatorStub(channel).ListModels(pb.ListModelsRequest()).models
            }
            assert models["a-rev"].state == READY
            if not lru:
                assert models["b-fp32"].state == READY
                assert (
                    models["c-int8"].state == pb.MODEL_STATE_FAILED and "memory_budget_bytes" in models["c-int8"].reason
                )
            else:
                assert models["b-fp32"].state == pb.MODEL_STATE_UNLOADED
                assert "least recently used" in models["b-fp32"].reason and "c-int8/1" in models["b-fp32"].reason
                assert models["c-int8"].state == READY


def test_an_ambiguous_pair_goes_to_the_default_or_is_refused_naming_the_candidates(
    tmp_path: Path, rev_dir: Path
) -> None:
    """Two models serving en->de (languages read from their manifests: nothing needs to be loaded to route)."""
    from nmtserve.server.metrics import ServerMetrics
    from nmtserve.server.models import ModelRegistry
    from nmtserve.server.validation import RequestError

    for name, target in (("en-de-a", demo_export("fp32")), ("en-de-b", demo_export("int8")), ("other", rev_dir)):
        (tmp_path / name).mkdir()
        os.symlink(target, tmp_path / name / "1")
    registry = ModelRegistry(server_config(tmp_path), DirectoryRepository(tmp_path), ServerMetrics())
    registry.entries = DirectoryRepository(tmp_path).scan()
    registry.active = {"en-de-a", "en-de-b"}
    registry.default = "en-de-b"
    assert registry.route_by_languages("en", "de") == "en-de-b"
    registry.active.add("other")
    registry.default = "other"
    with pytest.raises(RequestError) as caught:
        registry.route_by_languages("en", "de")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "en-de-a, en-de-b;" in caught.value.message and "TranslateRequest.model" in caught.value.message
    assert registry.route_by_languages("de", "") == "other"
    with pytest.raises(RequestError, match=r"served pairs: en->de \(en-de-a\), en->de \(en-de-b\), de->en \(other\)"):
        registry.route_by_languages("fr", "")


# -- routing by the source languages a multilingual model knows -------------------------------------------------


@pytest.fixture(scope="module")
def multilingual_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """demo (en->de, the default), OPUS-MT-style eu->en and ja->en models and an M2M-100 model (its manifest:
    en->de; its tokenizer: fairseq's 100 codes, ja among them, Basque not), converted from tiny random Hugging
    Face models and exported."""
    pytest.importorskip("transformers")
    from nmtserve.export.exporter import export_model
    from nmtserve.export.hf_convert import convert_hf
    from nmtserve.export.hf_testing import tiny_m2m100, tiny_marian

    work, root = tmp_path_factory.mktemp("multilingual-builds"), tmp_path_factory.mktemp("multilingual-repo")
    built = {
        "marian-eu-en": tiny_marian(work / "eu-en", pair=("eu", "en")),
        "marian-ja-en": tiny_marian(work / "ja-en", pair=("ja", "en"), seed=1),
        "m2m100": tiny_m2m100(work / "m2m100"),
    }
    exports = {}
    for name, hf_dir in built.items():
        exports[name] = export_model(convert_hf(hf_dir, work / f"{name}-ckpt"), work / name, "fp32", progress=False)
        (root / name).mkdir()
        os.symlink(exports[name], root / name / "1")
    (root / "demo").mkdir()
    os.symlink(demo_export("fp32"), root / "demo" / "1")
    return root, exports


def test_a_multilingual_model_serves_only_the_sources_its_tokenizer_knows(multilingual_repository) -> None:
    """eu->en goes to the eu->en model: M2M-100 has no Basque code (routing ignored a multilingual model's source,
    so M2M-100 matched any pair into one of its codes and the request was refused as "several models serve
    eu->en"). ja->en is served by both, so it is still refused, naming the candidates and TranslateRequest.model;
    fr->de only by M2M-100; eu->de by nobody."""
    root, exports = multilingual_repository
    with BackgroundServer(server_config(root)) as running, grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        texts = ["the program is free", "copy the file"]
        got, answered_by = translate_with_model(
            stub, pb.TranslateRequest(texts=texts, source_language="eu", target_language="en")
        )
        assert answered_by == "marian-eu-en/1"
        assert_matches(got, reference(Engine.load(exports["marian-eu-en"], threads=1), texts))
        _, answered_by = translate_with_model(
            stub, pb.TranslateRequest(texts=texts, source_language="fr", target_language="de")
        )
        assert answered_by == "m2m100/1"
        ambiguous = pb.TranslateRequest(texts=texts, source_language="ja", target_language="en")
        code, details = code_of(lambda: stub.Translate(ambiguous, timeout=60))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "several models serve ja->en: m2m100, marian-ja-en;" in details and "TranslateRequest.model" in details
        nobody = pb.TranslateRequest(texts=texts, source_language="eu", target_language="de")
        code, details = code_of(lambda: stub.Translate(nobody, timeout=60))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "no model serves eu->de (source_language/target_language)" in details
        assert "eu->en (marian-eu-en)" in details and "en->de (m2m100)" in details

"""``TranslateRequest.source_language`` / ``target_language`` and ``ModelInfo.languages``, on a real server.

A multilingual (Marian, ``>>xx<<`` target codes) tiny model takes any of its codes and nothing else; a
single-pair model accepts only its own pair. Bad codes are INVALID_ARGUMENT naming the field and the valid codes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

pytest.importorskip("transformers")

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.export.exporter import export_model
from nmtserve.export.hf_convert import convert_hf
from nmtserve.export.hf_testing import corpus_lines, tiny_marian
from nmtserve.export.testing import tiny_export
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig

CODES = ("de", "fr", "es")
OPTIONS = dict(beam_size=4, max_length=20)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multi")
    checkpoint = convert_hf(tiny_marian(root / "hf", languages=CODES), root / "ckpt")
    return export_model(checkpoint, root / "onnx", "fp32", progress=False)


def serve(model_dir: Path) -> BackgroundServer:
    config = ServerConfig(model=model_dir, port=0, metrics_port=0, threads=1, warmup=False, max_queue_delay_ms=20.0)
    return BackgroundServer(config)


def test_target_language_selects_the_code_token(model_dir: Path) -> None:
    engine = Engine.load(model_dir, threads=1)
    texts = corpus_lines()[:6]
    want = {
        code: [n[0].text for n in engine.translate([f">>{code}<<{t}" for t in texts], DecodingOptions(**OPTIONS))]
        for code in CODES
    }
    assert len({tuple(v) for v in want.values()}) > 1, "the codes must change the output for this test to mean much"
    with serve(model_dir) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        assert sorted(info.languages) == sorted(CODES)

        def ask(code: str) -> list[str]:
            request = pb.TranslateRequest(texts=texts, target_language=code, options=pb.DecodingOptions(**OPTIONS))
            return [t.hypotheses[0].text for t in stub.Translate(request).translations]

        with ThreadPoolExecutor(len(CODES) * 2) as pool:  # concurrent requests for different targets share batches
            got = list(pool.map(ask, CODES * 2))
        assert got == [want[code] for code in CODES * 2]
        with pytest.raises(grpc.RpcError) as error:
            stub.Translate(pb.TranslateRequest(texts=texts, target_language="xx"))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "target_language 'xx'" in error.value.details() and "de, es, fr" in error.value.details()


def test_single_pair_model_accepts_only_its_pair(tmp_path_factory: pytest.TempPathFactory) -> None:
    model_dir = tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")
    with serve(model_dir) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        assert list(stub.GetModelInfo(pb.GetModelInfoRequest()).languages) == []
        ok = stub.Translate(pb.TranslateRequest(texts=["the cat"], source_language="en", target_language="de"))
        assert len(ok.translations) == 1
        for field in ("source_language", "target_language"):
            with pytest.raises(grpc.RpcError) as error:
                stub.Translate(pb.TranslateRequest(texts=["the cat"], **{field: "fr"}))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"{field} 'fr'" in error.value.details() and "en->de" in error.value.details()

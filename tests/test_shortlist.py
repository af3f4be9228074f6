"""The vocabulary shortlist (``nmtserve export shortlist``): its table, its graph, its decoding and its gate.

Everything runs for real: the shipped demo export, its SentencePiece tokenizer, onnxruntime sessions, the
PyTorch demo model as the referee of the renormalised scores, a gRPC server on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from conftest import write_corpus

from nmtserve.cli.main import main as cli
from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.model_dir import ModelDirError, load_model_info
from nmtserve.engine.shortlist import SHORTLIST_FILE
from nmtserve.export.shortlist import ShortlistParameters, build_shortlist_export, build_table
from nmtserve.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig

TEXTS = [
    "The package is installed now.",
    "The file could not be opened.",
    "Click here to install the package, then restart the computer.",
    "The window was closed again.",
]
SMALL = ShortlistParameters(per_source=3, frequent=5, min_count=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("shortlist-corpus"), train=600, dev=24)


@pytest.fixture(scope="module")
def shortlist_dir(demo_model_dir: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shortlist") / "fp32"
    return build_shortlist_export(demo_model_dir, out, corpus, SMALL, bleu_split=None)


@pytest.fixture(scope="module")
def shortlisted(shortlist_dir: Path) -> Engine:
    return Engine.load(shortlist_dir, threads=1)


def test_table_keeps_each_sources_most_frequent_partners_beside_the_frequent_targets() -> None:
    # target 9 is in every pair (the most frequent); source 5 meets 6 three times, 7 twice, 8 once
    sources = [[5, 1], [5], [5], [4]]
    targets = [[6, 7, 9], [6, 7, 9], [6, 8, 9], [9]]
    table = build_table(sources, targets, vocab=10, parameters=ShortlistParameters(per_source=2, frequent=1))
    assert table.always.tolist() == [9]
    listed = table.targets[table.offsets[5] : table.offsets[6]].tolist()
    assert listed == [6, 7]  # most frequent first, 9 left to `always`, 8 (once) below min_count 2
    assert table.targets[table.offsets[4] : table.offsets[5]].tolist() == []  # 4 meets only the frequent 9
    assert table.targets[table.offsets[1] : table.offsets[2]].tolist() == []


def test_a_shortlist_of_the_whole_vocabulary_translates_exactly_as_the_full_export(
    demo_model_dir: Path, demo_engine: Engine, corpus: Path, tmp_path: Path
) -> None:
    everything = ShortlistParameters(per_source=0, frequent=load_model_info(demo_model_dir).vocab_size)
    whole = Engine.load(build_shortlist_export(demo_model_dir, tmp_path / "whole", corpus, everything, bleu_split=None))
    for options in (DecodingOptions(beam_size=4, num_hypotheses=2), DecodingOptions(beam_size=1)):
        want, got = demo_engine.translate(TEXTS, options), whole.translate(TEXTS, options)
        assert [[h.token_ids for h in n] for n in got] == [[h.token_ids for h in n] for n in want]
        scores = [(a.score, b.score) for x, y in zip(want, got, strict=True) for a, b in zip(x, y, strict=True)]
        assert max(abs(a - b) for a, b in scores) < 1e-4


def test_scores_are_the_models_log_probs_renormalised_over_the_sentences_shortlist(shortlisted: Engine) -> None:
    """One sentence per batch: its vocabulary is its own candidates; every chosen token is one of them, and the
    score is the PyTorch model's log-softmax over exactly those columns, summed over the hypothesis."""
    model = load_checkpoint(DEMO_CHECKPOINT)[0]
    shortlist = shortlisted.runtime.shortlist
    assert shortlist is not None
    for text in TEXTS:
        (source,) = shortlisted.encode_texts([text])
        allowed = shortlist.candidates(source)
        assert len(allowed) < shortlisted.info.vocab_size // 4
        (best,) = shortlisted.translate_ids([source], DecodingOptions(beam_size=4, length_penalty=0.0))[0][:1]
        tokens = [*best.token_ids, shortlisted.info.eos_id]
        assert set(tokens) <= set(allowed.tolist())
        with torch.no_grad():
            target_in = torch.tensor([[shortlisted.info.decoder_start_id, *tokens[:-1]]])
            logits = model(torch.tensor([source]), target_in)[0].double()
        restricted = torch.log_softmax(logits[:, torch.from_numpy(allowed)], dim=-1)
        position = {int(token): i for i, token in enumerate(allowed)}
        want = sum(float(restricted[step, position[token]]) for step, token in enumerate(tokens))
        assert best.log_prob == pytest.approx(want, abs=2e-3)


def test_the_batch_vocabulary_is_the_union_and_grows_when_a_sentence_joins(shortlisted: Engine) -> None:
    first, second = shortlisted.encode_texts(["The package is installed now.", "The driver was removed today."])
    shortlist = shortlisted.runtime.shortlist
    assert shortlist is not None
    batch = shortlisted.new_batch()
    batch.add([first], DecodingOptions(beam_size=2))
    batch.step()
    assert batch.vocabulary_size == len(shortlist.candidates(first))
    batch.add([second], DecodingOptions(beam_size=2))
    batch.step()
    union = np.union1d(shortlist.candidates(first), shortlist.candidates(second))
    assert batch.vocabulary_size == len(union) > len(shortlist.candidates(first))
    while len(batch):
        batch.step()
    assert batch.vocabulary_size == 0


def test_the_manifest_lists_the_table_and_a_changed_table_is_refused(shortlist_dir: Path, tmp_path: Path) -> None:
    info = load_model_info(shortlist_dir)
    assert info.manifest["shortlist"]["file"] == SHORTLIST_FILE
    assert SHORTLIST_FILE in info.manifest["files"]
    assert info.manifest["shortlist"]["per_source"] == SMALL.per_source
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in shortlist_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    table = copy / SHORTLIST_FILE
    table.write_bytes(table.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelDirError, match=r"sha256 mismatch for shortlist\.npz"):
        load_model_info(copy)


def test_the_gate_refuses_a_shortlist_that_loses_bleu(demo_model_dir: Path, corpus: Path, tmp_path: Path, capsys):
    out = tmp_path / "too-small"
    args = ["export", "shortlist", str(demo_model_dir), "--out", str(out), "--corpus", str(corpus)]
    assert cli([*args, "--per-source", "0", "--frequent", "8"]) == 2
    message = capsys.readouterr().err
    assert "loses" in message and "BLEU" in message and "limit 0.3" in message
    assert not out.exists() and not any(tmp_path.iterdir())


def test_a_shortlist_export_is_served_over_grpc(shortlist_dir: Path, shortlisted: Engine) -> None:
    want = [n[0].text for n in shortlisted.translate(TEXTS, DecodingOptions(beam_size=4))]
    config = ServerConfig(model=shortlist_dir, port=0, metrics_port=0, threads=1, warmup=False)
    with BackgroundServer(config) as server, grpc.insecure_channel(server.address) as channel:
        reply = pb_grpc.TranslatorStub(channel).Translate(
            pb.TranslateRequest(texts=TEXTS, options=pb.DecodingOptions(beam_size=4))
        )
    assert [t.hypotheses[0].text for t in reply.translations] == want


def test_a_beam_wider_than_the_shortlist_can_hold_is_invalid_argument(shortlist_dir: Path, shortlisted: Engine):
    """2 x beam_size candidates must fit in the tokens every sentence's list has (SMALL keeps very few)."""
    fits = shortlisted.decodable_vocabulary
    assert fits < shortlisted.info.vocab_size
    config = ServerConfig(model=shortlist_dir, port=0, metrics_port=0, threads=1, warmup=False)
    with BackgroundServer(config) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Translate(pb.TranslateRequest(texts=TEXTS, options=pb.DecodingOptions(beam_size=fits // 2 + 1)))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "beam_size" in refused.value.details() and str(fits) in refused.value.details()
        ok = stub.Translate(pb.TranslateRequest(texts=TEXTS[:1], options=pb.DecodingOptions(beam_size=fits // 2)))
    assert ok.translations[0].hypotheses[0].text


def test_an_int8_shortlist_keeps_int8_layers_and_decodes_from_its_subset(corpus: Path, tmp_path: Path) -> None:
    """int8: the projection's ``MatMulInteger`` reads the fed int8 columns, scales and zero points; the build's own
    check (a whole-vocabulary shortlist against the int8 export) ran, and the translations use shortlist tokens
    only."""
    import onnx

    from nmtserve.engine.model_dir import DECODER_STEP, demo_export

    out = build_shortlist_export(demo_export("int8"), tmp_path / "int8", corpus, SMALL, bleu_split=None)
    graph = onnx.load(str(out / DECODER_STEP)).graph
    projection = [n for n in graph.node if n.op_type == "MatMulInteger" and n.input[1].startswith("vocab.")]
    assert len(projection) == 1 and projection[0].input[3].startswith("vocab.")
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) > 10  # the layers stay int8
    checked = load_model_info(out).manifest["verification"]["shortlist"]
    assert checked["whole_vocabulary_log_prob_max_abs_diff"] < 0.5 and "whole_vocabulary_identical" in checked
    engine = Engine.load(out, threads=1)
    assert engine.runtime.shortlist is not None
    sources = engine.encode_texts(TEXTS)
    batch_vocabulary = set(np.concatenate([engine.runtime.shortlist.candidates(s) for s in sources]).tolist())
    for nbest in engine.translate_ids(sources, DecodingOptions(beam_size=4)):
        assert nbest[0].token_ids and set(nbest[0].token_ids) <= batch_vocabulary


@pytest.mark.parametrize("kernels", ["u8u8", "u8s7"])
def test_an_int8_shortlist_feeds_columns_converted_with_the_graph(corpus: Path, tmp_path: Path, kernels: str) -> None:
    """Under u8u8 and u8s7 (engine/int8_kernels.py) the projection's fed int8 columns (and zero points, or scales)
    are converted with the graph: a whole-vocabulary shortlist then scores as the full int8 export does in the
    same format, where both are exact integer arithmetic over the same values."""
    from nmtserve.engine.model_dir import demo_export

    out = build_shortlist_export(demo_export("int8"), tmp_path / "int8", corpus, SMALL, bleu_split=None)
    engine = Engine.load(out, threads=1, int8_kernels=kernels)
    assert engine.runtime.int8_kernels == kernels and engine.runtime.shortlist is not None
    columns = {name: array for name, (array, _) in engine.runtime.shortlist.columns.items()}
    if kernels == "u8u8":
        kinds = {columns[n].dtype for n in columns if n.endswith(("_quantized", "_zero_point"))}
        assert kinds == {np.dtype(np.uint8)}, kinds
    else:
        weights = [columns[n] for n in columns if n.endswith("_quantized")]
        assert weights and all(w.dtype == np.int8 and np.abs(w.astype(np.int32)).max() <= 64 for w in weights)
    engine.runtime.shortlist = engine.runtime.shortlist.covering_everything()
    full = Engine.load(demo_export("int8"), threads=1, int8_kernels=kernels)
    options = DecodingOptions(beam_size=4)
    for ours, theirs in zip(engine.translate(TEXTS, options), full.translate(TEXTS, options), strict=True):
        assert ours[0].token_ids == theirs[0].token_ids
        assert abs(float(ours[0].log_prob or 0) - float(theirs[0].log_prob or 0)) < 1e-3

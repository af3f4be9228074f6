"""The gRPC API package: committed stubs match the .proto, and the package is versioned as nmtserve.v1."""

from __future__ import annotations

import pytest

from nmtserve.protos import generate
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc


def test_committed_stubs_match_the_proto() -> None:
    pytest.importorskip("grpc_tools")
    assert generate.stale_files() == [], "run: python -m nmtserve.protos.generate"


def test_api_is_versioned() -> None:
    assert pb.DESCRIPTOR.package == "nmtserve.v1"
    assert pb.DESCRIPTOR.name == "nmtserve/v1/translator.proto"
    service = pb.DESCRIPTOR.services_by_name["Translator"]
    assert {m.name for m in service.methods} == {"Translate", "TranslateStream", "GetModelInfo", "ListModels"}
    stream = service.methods_by_name["TranslateStream"]
    assert stream.client_streaming and stream.server_streaming
    assert hasattr(pb_grpc, "TranslatorStub") and hasattr(pb_grpc, "add_TranslatorServicer_to_server")


def test_optional_fields_have_presence() -> None:
    """An explicit length_penalty of 0 and return_scores false must be distinguishable from "unset"."""
    options = pb.DecodingOptions()
    assert not options.HasField("length_penalty") and not options.HasField("return_scores")
    options.length_penalty, options.return_scores = 0.0, False
    assert options.HasField("length_penalty") and options.HasField("return_scores")
    assert not pb.Hypothesis(text="x").HasField("score")

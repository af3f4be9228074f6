"""A small synchronous Python client for the ``nmtserve.v1.Translator`` service.

    with TranslatorClient("127.0.0.1:50051") as client:
        client.wait_until_serving()
        print(client.translate_texts(["The package contains the documentation."]))

Options left as None (or 0) take the server's defaults. Errors surface as ``grpc.RpcError`` with the server's
status code and message.

Security: ``tls=True`` (or any of ``tls_ca``/``tls_cert``/``tls_key``) connects over TLS, verifying the server
against ``tls_ca`` (PEM path; default: the system's roots); ``tls_cert`` + ``tls_key`` present a client
certificate (mutual TLS); ``server_name`` overrides the name checked in the server's certificate; ``token`` is sent
as ``authorization: Bearer <token>`` with every call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Hypothesis:
    text: str
    score: float | None


@dataclass(frozen=True)
class StreamEvent:
    """One answer on a stream: final ``translations``, a ``partial`` (index, stable text), or an ``error``."""

    request_id: str
    translations: list[list[Hypothesis]] = field(default_factory=list)
    partial: tuple[int, str] | None = None
    error: tuple[grpc.StatusCode, str] | None = None

    @property
    def final(self) -> bool:
        return self.partial is None


def decoding_options(
    beam_size: int = 0,
    length_penalty: float | None = None,
    max_length: int = 0,
    num_hypotheses: int = 0,
    return_scores: bool | None = None,
) -> pb.DecodingOptions:
    options = pb.DecodingOptions(beam_size=beam_size, max_length=max_length, num_hypotheses=num_hypotheses)
    if length_penalty is not None:
        options.length_penalty = length_penalty
    if return_scores is not None:
        options.return_scores = return_scores
    return options


def _hypotheses(translation: pb.Translation) -> list[Hypothesis]:
    return [Hypothesis(h.text, h.score if h.HasField("score") else None) for h in translation.hypotheses]


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _event(response: pb.TranslateResponse) -> Iterator[StreamEvent]:
    if response.HasField("error"):
        code = _CODES.get(response.error.code, grpc.StatusCode.UNKNOWN)
        yield StreamEvent(response.request_id, error=(code, response.error.message))
    for partial in response.partials:
        yield StreamEvent(response.request_id, partial=(partial.index, partial.text))
    if response.translations:
        yield StreamEvent(response.request_id, translations=[_hypotheses(t) for t in response.translations])


def channel_credentials(
    tls_ca: Path | str | None = None, tls_cert: Path | str | None = None, tls_key: Path | str | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials from PEM files: the CA that signed the server's certificate (None: the system's roots) and,
    for mutual TLS, the client's certificate chain and key."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together")
    return grpc.ssl_channel_credentials(_read(tls_ca), _read(tls_key), _read(tls_cert))


def _read(path: Path | str | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


def secure_channel_options(server_name: str | None) -> list[tuple[str, object]]:
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class TranslatorClient:
    def __init__(
        self,
        target: str,
        timeout: float | None = 60.0,
        *,
        tls: bool = False,
        tls_ca: Path | str | None = None,
        tls_cert: Path | str | None = None,
        tls_key: Path | str | None = None,
        server_name: str | None = None,
        token: str | None = None,
    ) -> None:
        self.target, self.timeout = target, timeout
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if tls or tls_ca is not None or tls_cert is not None:
            credentials = channel_credentials(tls_ca, tls_cert, tls_key)
            self.channel = grpc.secure_channel(target, credentials, options + secure_channel_options(server_name))
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.metadata = auth_metadata(token)
        self.stub = pb_grpc.TranslatorStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def translate(
        self,
        texts: Sequence[str],
        options: pb.DecodingOptions | None = None,
        timeout: float | None = None,
        source_language: str = "",
        target_language: str = "",
    ) -> list[list[Hypothesis]]:
        """n-best lists (best first), one per text, in order (languages: for multilingual models)."""
        request = pb.TranslateRequest(
            texts=list(texts),
            options=options or pb.DecodingOptions(),
            source_language=source_language,
            target_language=target_language,
        )
        response = self.stub.Translate(request, timeout=timeout or self.timeout, metadata=self.metadata)
        return [_hypotheses(t) for t in response.translations]

    def translate_texts(
        self,
        texts: Sequence[str],
        options: pb.DecodingOptions | None = None,
        source_language: str = "",
        target_language: str = "",
    ) -> list[str]:
        """The best translation of each text."""
        nbests = self.translate(texts, options, source_language=source_language, target_language=target_language)
        return [nbest[0].text if nbest else "" for nbest in nbests]

    def stream(self, requests: Iterable[pb.TranslateRequest], timeout: float | None = None) -> Iterator[StreamEvent]:
        """Send ``requests`` on one TranslateStream; yield events as the server sends them (any order)."""
        calls = self.stub.TranslateStream(iter(requests), timeout=timeout or self.timeout, metadata=self.metadata)
        for response in calls:
            yield from _event(response)

    def model_info(self) -> pb.ModelInfo:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self.metadata)

    def health(self, service: str = "") -> str:
        """SERVING, NOT_SERVING, ... (grpc.health.v1) for ``service`` ("" = the whole server)."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = self.health_stub.Check(request, timeout=self.timeout, metadata=self.metadata)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Block until health reports SERVING (the model is loaded and warmed up); TimeoutError otherwise."""
        request = health_pb2.HealthCheckRequest(service="")
        try:
            watch = self.health_stub.Watch(request, timeout=timeout, wait_for_ready=True, metadata=self.metadata)
            for response in watch:
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        raise TimeoutError(f"{self.target} did not report SERVING within {timeout} s")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> TranslatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Document-mode requests (``TranslateRequest.format`` set): texts -> sentence work -> translated texts.

Every sentence (or piece of a sentence too long for the model) becomes one ``EncodedText`` with its own global
index, so the service queues them as independent work items: a 200-sentence page fills batches together with
other requests' sentences. ``DocumentRequest.assemble`` puts the finished sentences back in order.

Checks (INVALID_ARGUMENT, each naming the field and the setting): ``format`` known; ``texts`` count
(``max_texts_per_request``); the request's total UTF-8 size (``max_request_bytes``, before any parsing, so a huge
document costs nothing but its bytes); control characters; the number of sentences
(``max_sentences_per_request``, before tokenising and again after long sentences are split).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nmtserve.engine import Hypothesis
from nmtserve.engine.tokenizer import Tokenizer
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.config import ServerConfig
from nmtserve.server.documents.plan import FORMATS, DocumentError, Plan, plan_document
from nmtserve.server.documents.segment import Span
from nmtserve.server.documents.split import join_pieces, split_to_fit
from nmtserve.server.validation import EncodedText, check_characters, invalid


@dataclass
class _Sentence:
    text: str
    pieces: list[Span]  # of ``text``; one piece when it fits the model
    first: int  # global index of the first piece


@dataclass
class DocumentRequest:
    """The work of one document-mode request and how to rebuild its texts from the translated pieces."""

    plans: list[Plan]
    sentences: list[list[_Sentence]]  # per text
    encoded: list[EncodedText] = field(default_factory=list)
    # the languages a long sentence's pieces are joined for (``split.piece_join``): the texts' and the answer's
    source: str = ""
    target: str = ""

    def _sentence(self, sentence: _Sentence, pieces: dict[int, str]) -> str:
        translated = [pieces[sentence.first + k] for k in range(len(sentence.pieces))]
        return join_pieces(sentence.text, sentence.pieces, translated, self.source, self.target)

    def assemble(self, pieces: dict[int, str]) -> list[str]:
        """The translated texts, given every piece's translation by global index."""
        return [
            plan.rebuild([self._sentence(s, pieces) for s in sentences])
            for plan, sentences in zip(self.plans, self.sentences, strict=True)
        ]

    def text_of(self, index: int) -> int:
        """Which text a global piece index belongs to."""
        for i, sentences in enumerate(self.sentences):
            if sentences and index < sentences[-1].first + len(sentences[-1].pieces):
                return i
        raise IndexError(index)

    def prefix(self, text: int, pieces: dict[int, str]) -> str | None:
        """The translated text up to its first unfinished sentence (None when the format has no prefixes)."""
        plan = self.plans[text]
        if plan.prefix is None:
            return None
        done = []
        for sentence in self.sentences[text]:
            if any(sentence.first + k not in pieces for k in range(len(sentence.pieces))):
                break
            done.append(self._sentence(sentence, pieces))
        return plan.prefix(done)


def check_document_texts(texts: Sequence[str], format: str, config: ServerConfig) -> None:
    if format not in FORMATS:
        raise invalid(f"format {format!r} is not one of {', '.join(FORMATS)} (or empty for one input per text)")
    if not texts:
        raise invalid("texts is empty: send at least one text")
    if len(texts) > config.max_texts_per_request:
        raise invalid(
            f"texts has {len(texts)} entries; the limit is {config.max_texts_per_request} (max_texts_per_request)"
        )
    size = sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)
    if size > config.max_request_bytes:
        raise invalid(f"texts are {size} bytes (UTF-8); the limit is {config.max_request_bytes} (max_request_bytes)")
    check_characters(texts)


def _too_many(count: int, config: ServerConfig) -> None:
    if count > config.max_sentences_per_request:
        raise invalid(
            f"the texts have {count} sentences (long ones split to fit max_input_tokens); the limit is "
            f"{config.max_sentences_per_request} (max_sentences_per_request)"
        )


def encode_documents(
    texts: Sequence[str],
    format: str,
    tokenizer: Tokenizer,
    config: ServerConfig,
    language: str = "en",
    target: str = "",
) -> DocumentRequest:
    """The request's sentences, tokenised and split to fit ``max_input_tokens``, or INVALID_ARGUMENT.

    ``language``: the texts' language (their sentence rules); ``target``: the translation's, which with it decides
    what joins the translated pieces of a sentence too long for the model (empty: a language with spaces)."""
    check_document_texts(texts, format, config)
    plans = []
    for i, text in enumerate(texts):
        try:
            plans.append(plan_document(text, format, language))
        except DocumentError as error:
            raise invalid(f"texts[{i}]: {error}") from None
    _too_many(sum(len(plan.sentences) for plan in plans), config)
    limit = config.max_input_tokens
    flat = [sentence for plan in plans for sentence in plan.sentences]
    ids = tokenizer.encode_batch(flat) if flat else []
    request = DocumentRequest(plans, [], source=language, target=target)
    position = 0
    for plan in plans:
        sentences = []
        for text in plan.sentences:
            sentence_ids = ids[position]
            position += 1
            first = len(request.encoded)
            if len(sentence_ids) <= limit:
                pieces = [Span(0, len(text))]
                request.encoded.append(EncodedText(first, [*sentence_ids, tokenizer.eos_id]))
            else:
                pieces = split_to_fit(text, lambda piece: len(tokenizer.encode(piece)), limit)
                _too_many(len(request.encoded) + len(pieces), config)
                for k, piece in enumerate(pieces):
                    piece_ids = tokenizer.encode(text[piece.start : piece.end])[:limit]  # a lone token too long
                    request.encoded.append(EncodedText(first + k, [*piece_ids, tokenizer.eos_id]))
            sentences.append(_Sentence(text, pieces, first))
        request.sentences.append(sentences)
    _too_many(len(request.encoded), config)
    return request


class DocumentProgress:
    """Collects finished pieces as the engine posts them; on a stream, sends each text's grown prefix."""

    def __init__(self, document: DocumentRequest, tokenizer: Tokenizer, send_partial=None) -> None:
        self.document, self.tokenizer, self.send_partial = document, tokenizer, send_partial
        self.pieces: dict[int, str] = {}
        self._sent: dict[int, str] = {}

    async def finished(self, index: int, hypotheses: list[Hypothesis]) -> None:
        self.pieces[index] = self.tokenizer.decode(hypotheses[0].token_ids) if hypotheses else ""
        if self.send_partial is None:
            return
        text = self.document.text_of(index)
        prefix = self.document.prefix(text, self.pieces)
        if prefix and prefix != self._sent.get(text, ""):
            self._sent[text] = prefix
            await self.send_partial(text, prefix)


def document_response(
    document: DocumentRequest, results: dict[int, list[Hypothesis]], tokenizer: Tokenizer, return_scores: bool
) -> pb.TranslateResponse:
    """One translation per text: the rebuilt document, scored by the mean of its pieces' best scores."""
    pieces = {index: tokenizer.decode(hypotheses[0].token_ids) for index, hypotheses in results.items()}
    response = pb.TranslateResponse()
    texts = document.assemble(pieces)
    for i, text in enumerate(texts):
        hypothesis = response.translations.add().hypotheses.add(text=text)
        if return_scores:
            sentences = document.sentences[i]
            indices = [s.first + k for s in sentences for k in range(len(s.pieces))]
            scores: list[float] = [s for j in indices if results[j] and (s := results[j][0].score) is not None]
            hypothesis.score = sum(scores) / len(scores) if scores else 0.0
    return response


def translate_document(engine, text: str, format: str, options, config: ServerConfig) -> str:
    """One document translated in this process with ``engine`` (``nmtserve translate --file``): the same plan,
    limits and splitting as the server, without a server."""
    pair = engine.info.manifest.get("languages", {})
    document = encode_documents(
        [text], format, engine.tokenizer, config, pair.get("source", "en"), pair.get("target", "")
    )
    nbests = engine.translate_ids([e.source_ids for e in document.encoded], options) if document.encoded else []
    pieces = {e.index: engine.tokenizer.decode(n[0].token_ids) for e, n in zip(document.encoded, nbests, strict=True)}
    return document.assemble(pieces)[0]

"""``nmtserve evaluate`` and ``nmtserve translate``: locally (ONNX engine or PyTorch reference) or through a
running server."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nmtserve.cli.common import (
    DEFAULT_CORPUS,
    add_backend_flags,
    add_decoding_flags,
    decoding_options,
    int_at_least,
    model_dir_of,
)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.backend == "torch":
        from nmtserve.model.evaluate import evaluate_checkpoint

        print(evaluate_checkpoint(args.checkpoint, args.corpus, args.split, decoding_options(args), args.limit))
        return 0
    from nmtserve.model.scoring import bleu_of

    options = decoding_options(args)
    print(bleu_of(model_dir_of(args), args.corpus, args.split, args.limit, options, threads=args.threads))
    return 0


MAX_FILE_BYTES = 16 * 1024 * 1024  # refused before reading: locally; a server applies its own max_request_bytes


def _read_document(args: argparse.Namespace) -> tuple[str, str]:
    """(format, text) of ``--file``, or ValueError with a one-line reason."""
    from nmtserve.server.documents.files import FORMAT_OF_SUFFIX

    path: Path = args.file
    format = args.format or FORMAT_OF_SUFFIX.get(path.suffix.lower())
    if format is None:
        raise ValueError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; give --format")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path} is {size} bytes; the limit is {MAX_FILE_BYTES} (translate --file)")
    data = path.read_bytes()
    try:
        return format, data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 (invalid byte at offset {error.start}); convert it first") from None


def _translate_file(args: argparse.Namespace) -> int:
    """``translate --file IN --out OUT``: one document (.txt, .html, .md, .srt) translated with its layout kept."""
    try:
        format, text = _read_document(args)
    except (OSError, ValueError) as error:
        print(f"nmtserve translate: {error}", file=sys.stderr)
        return 2
    if args.server:
        import grpc

        from nmtserve.loadtest.client import TranslatorClient
        from nmtserve.loadtest.client import decoding_options as wire_options
        from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb

        options = wire_options(args.beam_size, args.length_penalty, args.max_length)
        try:
            with TranslatorClient(args.server, timeout=args.timeout, **_client_security(args)) as client:
                request = pb.TranslateRequest(texts=[text], options=options, format=format)
                response = client.stub.Translate(request, timeout=args.timeout, metadata=client.metadata)
        except grpc.RpcError as error:
            print(f"nmtserve translate: {args.server}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
        translated = response.translations[0].hypotheses[0].text
    else:
        from nmtserve.engine import Engine
        from nmtserve.server.config import ServerConfig
        from nmtserve.server.documents.requests import translate_document
        from nmtserve.server.validation import RequestError

        engine = Engine.load(model_dir_of(args), threads=args.threads)
        local = ServerConfig(max_request_bytes=MAX_FILE_BYTES, max_sentences_per_request=10**6)
        try:
            translated = translate_document(engine, text, format, decoding_options(args), local)
        except RequestError as error:
            print(f"nmtserve translate: {args.file}: {error.message}", file=sys.stderr)
            return 2
    args.out.write_text(translated, encoding="utf-8")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    if args.file is not None:
        if args.out is None:
            print("nmtserve translate: --file needs --out", file=sys.stderr)
            return 2
        return _translate_file(args)
    if args.server:
        return _translate_remote(args)
    lines = [line.rstrip("\n") for line in sys.stdin]
    texts = [line for line in lines if line.strip()]
    if args.backend == "torch":
        from nmtserve.model.checkpoint import load_checkpoint
        from nmtserve.model.evaluate import translate_texts

        model, tokenizer, _ = load_checkpoint(args.checkpoint)
        translated = translate_texts(model, tokenizer, texts, decoding_options(args), args.batch_size)
    else:
        from nmtserve.engine import Engine

        engine = Engine.load(model_dir_of(args), threads=args.threads)
        nbests = engine.translate(texts, decoding_options(args), args.batch_size, max_batch_tokens=args.batch_tokens)
        translated = [nbest[0].text or "" for nbest in nbests]
    translations = iter(translated)
    for line in lines:  # blank lines stay blank, so output lines match input lines one to one
        print(next(translations) if line.strip() else "")
    return 0


def _client_security(args: argparse.Namespace) -> dict:
    """TranslatorClient's TLS and token arguments from ``translate --server`` flags (the token from a file or
    $NMTSERVE_TOKEN, never from a flag, which would show in the process list)."""
    token = os.environ.get("NMTSERVE_TOKEN") or None
    if args.token_file is not None:
        token = args.token_file.read_text(encoding="utf-8").strip().splitlines()[0].strip()
    return {
        "tls": args.tls,
        "tls_ca": args.tls_ca,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "server_name": args.tls_server_name,
        "token": token,
    }


def _translate_remote(args: argparse.Namespace) -> int:
    """``translate --server``: stdin lines in chunks to a running server (a few chunks in flight), stdout in order."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from nmtserve.loadtest.client import TranslatorClient
    from nmtserve.loadtest.client import decoding_options as wire_options

    lines = [line.rstrip("\n") for line in sys.stdin]
    options = wire_options(args.beam_size, args.length_penalty, args.max_length)
    chunks = [lines[i : i + args.batch_size] for i in range(0, len(lines), args.batch_size)]
    try:
        client = TranslatorClient(args.server, timeout=args.timeout, **_client_security(args))
    except (OSError, ValueError) as error:  # unreadable certificate or token files
        print(f"nmtserve translate: {error}", file=sys.stderr)
        return 2
    with client, ThreadPoolExecutor(4) as pool:
        try:
            languages = {"source_language": args.source_language, "target_language": args.target_language}
            for translations in pool.map(lambda chunk: client.translate_texts(chunk, options, **languages), chunks):
                print("\n".join(translations))
        except grpc.RpcError as error:
            print(f"nmtserve translate: {args.server}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="sacreBLEU and chrF of a model on a corpus split")
    add_backend_flags(evaluate)
    evaluate.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    evaluate.add_argument("--split", default="test", choices=["dev", "test"])
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    add_decoding_flags(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    translate = commands.add_parser("translate", help="translate stdin lines to stdout, one per line")
    add_backend_flags(translate)
    translate.add_argument("--batch-size", type=int_at_least(1), default=32)
    translate.add_argument(
        "--batch-tokens",
        type=int_at_least(1),
        default=None,
        help="ONNX engine: at most this many padded source tokens decoded together (default: no bound)",
    )
    translate.add_argument("--server", metavar="HOST:PORT", default=None, help="translate with a running server")
    translate.add_argument("--timeout", type=float, default=300.0, help="with --server: seconds per request")
    translate.add_argument("--source-language", default="", help="with --server: e.g. eng_Latn (NLLB), en (M2M-100)")
    translate.add_argument("--target-language", default="", help="with --server: e.g. deu_Latn (NLLB), de (M2M-100)")
    translate.add_argument("--tls", action="store_true", help="with --server: connect over TLS (system CA roots)")
    translate.add_argument("--tls-ca", type=Path, default=None, metavar="FILE", help="with --server: TLS, server CA")
    translate.add_argument("--tls-cert", type=Path, default=None, metavar="FILE", help="client certificate (mTLS)")
    translate.add_argument("--tls-key", type=Path, default=None, metavar="FILE", help="client key (mTLS)")
    translate.add_argument("--tls-server-name", default=None, help="name to verify in the server's certificate")
    translate.add_argument(
        "--token-file", type=Path, default=None, metavar="FILE", help="bearer token (first line; or $NMTSERVE_TOKEN)"
    )
    translate.add_argument(
        "--file", type=Path, default=None, metavar="IN", help="translate one document (.txt .html .md .srt) to --out"
    )
    translate.add_argument("--out", type=Path, default=None, metavar="OUT", help="with --file: where to write it")
    translate.add_argument(
        "--format", default=None, choices=["text", "html", "markdown", "srt"], help="with --file: default from suffix"
    )
    add_decoding_flags(translate)
    translate.set_defaults(func=cmd_translate)

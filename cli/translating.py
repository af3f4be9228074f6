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


def cmd_translate(args: argparse.Namespace) -> int:
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
        translated = [nbest[0].text or "" for nbest in engine.translate(texts, decoding_options(args))]
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
            for translations in pool.map(lambda chunk: client.translate_texts(chunk, options), chunks):
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
    translate.add_argument("--batch-size", type=int, default=32)
    translate.add_argument("--server", metavar="HOST:PORT", default=None, help="translate with a running server")
    translate.add_argument("--timeout", type=float, default=300.0, help="with --server: seconds per request")
    translate.add_argument("--tls", action="store_true", help="with --server: connect over TLS (system CA roots)")
    translate.add_argument("--tls-ca", type=Path, default=None, metavar="FILE", help="with --server: TLS, server CA")
    translate.add_argument("--tls-cert", type=Path, default=None, metavar="FILE", help="client certificate (mTLS)")
    translate.add_argument("--tls-key", type=Path, default=None, metavar="FILE", help="client key (mTLS)")
    translate.add_argument("--tls-server-name", default=None, help="name to verify in the server's certificate")
    translate.add_argument(
        "--token-file", type=Path, default=None, metavar="FILE", help="bearer token (first line; or $NMTSERVE_TOKEN)"
    )
    add_decoding_flags(translate)
    translate.set_defaults(func=cmd_translate)

"""``nmtserve serve``: the gRPC server, its settings layered defaults < TOML < environment < flags."""

from __future__ import annotations

import argparse
import logging
import sys


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from nmtserve.server.app import serve
    from nmtserve.server.config import ConfigError, load_config
    from nmtserve.server.logs import setup_logging

    try:
        loaded = load_config(vars(args), config_file=args.config)
    except ConfigError as error:
        print(f"nmtserve serve: {error}", file=sys.stderr)
        return 2
    config = loaded.config
    setup_logging(config.log_format, "debug" if args.verbose else config.log_level)
    log = logging.getLogger("nmtserve.serve")
    for warning in loaded.warnings:
        log.warning(warning)
    log.info("configuration", extra={"fields": {"config": config.as_dict(), "set_by": loaded.sources}})
    return asyncio.run(serve(config))


def register(commands: argparse._SubParsersAction) -> None:
    from nmtserve.server.config import add_flags

    serve = commands.add_parser(
        "serve",
        help="run the gRPC translation server",
        description="Serve an exported model over gRPC (Translator, health, reflection) with Prometheus metrics. "
        "Settings: defaults < --config TOML < NMTSERVE_* environment variables < flags.",
    )
    add_flags(serve)
    serve.set_defaults(func=cmd_serve)

"""Document mode vs one request per sentence, alone and with other clients loading the server.

An HTML page of ``--paragraphs`` paragraphs (multi-sentence paragraphs of Debian's HTML manuals) is translated
(a) as one ``format=html`` request, whose sentences the scheduler batches together (and with other requests'),
and (b) sentence by sentence, one request each from one client, as a client without document mode would. Each
is run alone and while ``--load-clients`` other clients send single sentences back to back. Prints seconds per
page, and the load clients' sentences per second and latency (p50/p99 of the requests that finished while the
page was in flight): the figures that show whether a big page starves other clients. ``--repeat`` runs each
measurement that many times, alternating the two modes. Run: ``python -m nmtserve.bench.documents``.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from html import escape

import grpc

from nmtserve.bench.segmenters import paragraphs
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig
from nmtserve.server.documents import plan_document

LOAD_SENTENCES = ["Open the file menu.", "The package contains the documentation.", "Hello."]


def page(count: int) -> str:
    body = "\n".join(f"<p>{escape(text)}</p>" for text in paragraphs()[:count])
    return f"<!DOCTYPE html><html><head><title>Manual</title></head><body>\n{body}\n</body></html>"


def load(stub, options: pb.DecodingOptions, stop: threading.Event, finished: list[tuple[float, float]]) -> None:
    """Single sentences back to back; appends (finish time, latency) per answer."""
    i = 0
    while not stop.is_set():
        started = time.perf_counter()
        stub.Translate(pb.TranslateRequest(texts=[LOAD_SENTENCES[i % 3]], options=options))
        now = time.perf_counter()
        finished.append((now, now - started))
        i += 1


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--paragraphs", type=int, default=100)
    parser.add_argument("--load-clients", type=int, default=16)
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    html = page(args.paragraphs)
    sentences = plan_document(html, "html").sentences
    options = pb.DecodingOptions(beam_size=args.beam_size, max_length=args.max_length)
    config = ServerConfig(port=0, metrics_port=0, threads=args.threads, warmup=True)
    print(f"page: {args.paragraphs} paragraphs, {len(sentences)} sentences, {len(html)} bytes; beam {args.beam_size}")
    with BackgroundServer(config) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)

        def document() -> None:
            stub.Translate(pb.TranslateRequest(texts=[html], format="html", options=options), timeout=3600)

        def one_by_one() -> None:
            for sentence in sentences:
                stub.Translate(pb.TranslateRequest(texts=[sentence], options=options), timeout=3600)

        for loaded in (False, True):
            stop, threads = threading.Event(), []
            finished: list[tuple[float, float]] = []
            if loaded:
                threads = [
                    threading.Thread(target=load, args=(stub, options, stop, finished), daemon=True)
                    for _ in range(args.load_clients)
                ]
                for thread in threads:
                    thread.start()
                time.sleep(1.0)
            for _ in range(args.repeat):
                for name, run in (("document (format=html)", document), ("one request per sentence", one_by_one)):
                    started = time.perf_counter()
                    run()
                    ended = time.perf_counter()
                    seconds = ended - started
                    where = "alone"
                    if loaded:
                        during = [latency for at, latency in list(finished) if started <= at <= ended]
                        where = (
                            f"with {args.load_clients} load clients: {len(during) / seconds:5.1f} load sentences/s, "
                            f"p50 {percentile(during, 50) * 1000:5.0f} ms p99 {percentile(during, 99) * 1000:5.0f} ms"
                            if during
                            else f"with {args.load_clients} load clients: none finished"
                        )
                    print(
                        f"{name:26s} {seconds:8.2f} s/page {len(sentences) / seconds:7.1f} sentences/s  {where}",
                        flush=True,
                    )
            stop.set()
            for thread in threads:
                thread.join()


if __name__ == "__main__":
    main()

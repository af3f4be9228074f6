"""Why the deployment has a headless Service: one gRPC channel keeps its HTTP/2 connection, and so all its requests,
on one replica unless the client balances per request.

Two real servers on 127.0.0.1 stand for two pods; a target resolving to both addresses stands for the headless
Service's DNS answer (``dns:///nmtserve-headless...`` returns one A record per ready pod). With gRPC's default
``pick_first`` policy (what a ClusterIP Service amounts to: one connection, one backend) every request of the channel
lands on one server; with ``round_robin`` (the service config docs/deploy.md gives clients) they alternate.
"""

from __future__ import annotations

import json
import urllib.request

import grpc
from deploy_support import local_stack
from prometheus_client.parser import text_string_to_metric_families

from nmtserve.loadtest.serverproc import ServerProcess
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc

REQUESTS = 20


def answered(server: ServerProcess) -> float:
    """Translate requests the server has answered OK, from its own /metrics."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    total = 0.0  # summed over the served models (the series carry a model label)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "model"}
            if sample.name == "nmtserve_requests_total" and labels == {"method": "Translate", "code": "OK"}:
                total += sample.value
    return total


def service_config(policy: str) -> str:
    return json.dumps({"loadBalancingConfig": [{policy: {}}]})


def test_round_robin_spreads_one_channel_over_replicas_pick_first_pins_it() -> None:
    servers = [local_stack.start_server({"NMTSERVE_WARMUP": "false"}) for _ in range(2)]
    try:
        for server in servers:
            server.wait_for("serving", timeout=180)
        target = "ipv4:" + ",".join(server.address for server in servers)
        spread = {}
        for policy in ("pick_first", "round_robin"):
            before = [answered(s) for s in servers]
            with grpc.insecure_channel(target, options=[("grpc.service_config", service_config(policy))]) as channel:
                stub = pb_grpc.TranslatorStub(channel)
                for _ in range(REQUESTS):
                    stub.Translate(pb.TranslateRequest(texts=["Hello."]), timeout=60)
            spread[policy] = [answered(s) - b for s, b in zip(servers, before, strict=True)]
        assert sorted(spread["pick_first"]) == [0, REQUESTS], spread
        assert sum(spread["round_robin"]) == REQUESTS and min(spread["round_robin"]) >= REQUESTS // 4, spread
    finally:
        for server in servers:
            server.stop(timeout=30)

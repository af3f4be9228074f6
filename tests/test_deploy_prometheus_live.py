"""The dashboard and the rules against a REAL Prometheus scraping a REAL server, both on 127.0.0.1.

Setup (deploy/tools/local_stack.py, the same code that renders the docs' plots): ``nmtserve serve`` on the demo model
with a small queue, Debian's Prometheus (obtained by the test setup itself, see deploy/tools/debian_tools.py) running
the shipped configuration and rules with a 1 s scrape and evaluation interval, then about 15 s of bounded, mixed
traffic: translations, streams, invalid requests and bursts that overflow the queue.

Then every PromQL expression the deployment ships is run through Prometheus's HTTP API: each dashboard query must
return data (no misspelt metric, no empty panel), each recording rule must return data, each series an alert reads
must exist, and every rule must evaluate without error. The GPU panels read NVIDIA's DCGM exporter and one alert
reads kube-state-metrics; neither exists without a GPU and a cluster, so those expressions are only checked to
parse and evaluate (to nothing). Last, the server is stopped with SIGTERM: it drains and exits 0, and the real
Prometheus sees the instance go down and raises the alert for it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_support import debian_tools, local_stack, render_dashboard, require
from deploy_support import promqueries as pq

TRAFFIC_SECONDS = 15.0
JOB = local_stack.JOB
POD_LABELS = local_stack.POD_LABELS


@dataclass
class Live:
    stack: local_stack.Stack
    traffic: local_stack.TrafficReport
    end: float

    @property
    def api(self) -> pq.PrometheusAPI:
        return self.stack.prometheus.api

    @property
    def rate_interval(self) -> str:
        """A window over the whole traffic, as Grafana's $__rate_interval over a panel showing the last minute."""
        return f"{int(self.end - self.traffic.started) + 5}s"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tools = require(debian_tools.find_prometheus, "Debian's Prometheus")
    with local_stack.running_stack(tmp_path_factory.mktemp("stack"), tools) as stack:
        traffic = local_stack.send_traffic(stack.server.address, TRAFFIC_SECONDS)
        time.sleep(3)  # the last scrapes and rule evaluations after the traffic (1 s intervals)
        yield Live(stack, traffic, time.time())


def test_prometheus_scrapes_the_server_with_the_shipped_job(live: Live) -> None:
    (target,) = [t for t in live.api.targets() if t["labels"].get("job") == JOB]
    assert target["health"] == "up", target.get("lastError")
    assert target["scrapeUrl"] == live.stack.server.metrics_url
    info = live.api.query(f'nmtserve_model_info{{job="{JOB}"}}')
    assert [s["metric"]["device"] for s in info] == ["cpu"]


def test_traffic_reached_the_server_and_its_counters(live: Live) -> None:
    codes = live.traffic.codes
    assert codes["OK"] >= 20, codes
    assert codes["INVALID_ARGUMENT"] >= 5, codes
    assert codes["RESOURCE_EXHAUSTED"] >= 1, f"the bursts did not overflow the queue: {codes}"
    # What Prometheus scraped is what the clients saw, request for request (unary Translate calls).
    for code in ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
        query = f'sum(nmtserve_requests_total{{job="{JOB}", method="Translate", code="{code}"}})'
        (sample,) = live.api.query(query, live.end)
        assert float(sample["value"][1]) == live.traffic.by_method["Translate", code], code


def test_every_dashboard_query_returns_data(live: Live) -> None:
    dashboard = pq.load_dashboard()
    variables = pq.dashboard_variables(dashboard, {"job": JOB})
    empty, external = [], []
    for query in pq.dashboard_queries(dashboard):
        expr = pq.expand_grafana(query.expr, variables, live.rate_interval)
        result = live.api.query(expr, live.end)  # raises PromQLError on anything Prometheus cannot parse or run
        if query.external:
            external.append(query.name)
            assert result == [], f"{query.name}: DCGM series cannot exist without a GPU"
        elif not result or all(not _finite(s["value"][1]) for s in result):
            empty.append(f"{query.name}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert len(external) == 4, external  # the four GPU panels: parsed and evaluated, no data without a GPU


def test_every_rule_evaluates_cleanly_and_reads_existing_series(live: Live) -> None:
    groups = live.api.rule_groups()
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    queries = pq.rule_queries()
    assert set(rules) == {q.name for q in queries}, "Prometheus loaded other rules than the rules file has"
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
    for query in queries:
        live.api.query(query.expr, live.end)  # every expression parses and evaluates
        if query.source == "record":
            assert live.api.query(query.name, live.end), f"recording rule {query.name} has no data"
        if query.external:
            continue
        for selector in pq.selectors(query.expr):
            assert live.api.query(selector, live.end), f"{query.name}: {selector} selects nothing"


def test_saturation_alert_is_pending_and_healthy_alerts_are_quiet(live: Live) -> None:
    active = {a["labels"]["alertname"]: a for a in live.api.alerts()}
    assert "NmtserveQueueSaturated" in active, f"RESOURCE_EXHAUSTED answers must raise it; active: {list(active)}"
    assert active["NmtserveQueueSaturated"]["state"] == "pending", "for: 5m has not passed yet"
    assert active["NmtserveQueueSaturated"]["labels"]["instance"] == live.stack.metrics_target
    for quiet in ("NmtserveNoModelLoaded", "NmtserveInstanceDown", "NmtserveAbsent", "NmtserveHighLatencyP99"):
        assert quiet not in active, f"{quiet} is active on a healthy server"


def test_adapter_queries_give_each_pod_a_value(live: Live) -> None:
    matchers = ",".join(f'{k}="{v}"' for k, v in POD_LABELS.items())
    for rule in pq.adapter_rules():
        assert live.api.query(rule["seriesQuery"], live.end), f"{rule['seriesQuery']} discovers no series"
        series = rule["seriesQuery"].split("{", 1)[0]
        expr = pq.expand_adapter(rule["metricsQuery"], series, matchers, "pod")
        result = live.api.query(expr, live.end)
        assert [s["metric"] for s in result] == [{"pod": POD_LABELS["pod"]}], (expr, result)
        assert _finite(result[0]["value"][1])


def test_dashboard_renders_to_png(live: Live, tmp_path: Path) -> None:
    rendered = render_dashboard.render_dashboard(live.api, live.traffic.started, live.end, tmp_path)
    assert [p.name for p in rendered.paths] == [
        "deploy_dashboard_traffic.png",
        "deploy_dashboard_latency.png",
        "deploy_dashboard_engine_batches.png",
        "deploy_dashboard_load_and_model.png",
    ]
    assert rendered.skipped_rows == ["GPU (NVIDIA DCGM exporter)"]
    assert rendered.series and all(rendered.series.values()), f"empty panels: {rendered.series}"
    for path in rendered.paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_sigterm_drains_and_prometheus_sees_the_instance_go_down(live: Live) -> None:
    assert live.stack.server.stop(timeout=40) == 0, "SIGTERM must drain and exit 0"
    live.stack.server.wait_for("draining", timeout=1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        down = live.api.query(f'up{{job="{JOB}"}} == 0')
        active = {a["labels"]["alertname"]: a["state"] for a in live.api.alerts()}
        if down and active.get("NmtserveInstanceDown") == "pending":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"Prometheus did not see the instance go down: up==0 {down}, alerts {active}")
    assert active.get("NmtserveAbsent") == "pending"


def _finite(value: str) -> bool:
    return bool(re.fullmatch(r"-?[0-9.e+-]+", value)) and value.lower() not in ("nan", "+inf", "-inf")

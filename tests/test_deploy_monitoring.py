"""Prometheus configuration and rules, the Grafana dashboard and provisioning, and the compose stack, checked offline:
promtool (Debian's Prometheus) checks the configuration and rules and runs the rules' unit tests; every metric and
label the dashboard, the rules and the adapter read is checked against the server's own metric definitions; the
dashboard's layout and variables are checked; the compose files are validated against the Compose specification's
schema (from Debian's docker-compose package) and against the image and the server's drain.

What the expressions return on a real server is tested in test_deploy_prometheus_live.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_support import DEPLOY, debian_tools, prometheusrule, require
from deploy_support import dockerfile_model as dm
from deploy_support import promqueries as pq

from nmtserve.server.config import ServerConfig
from nmtserve.server.metrics import ServerMetrics
from nmtserve.server.service import SERVICE_NAME

PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
COMPOSE = DEPLOY / "compose"
# Labels every scraped series may carry besides its own: target labels, Kubernetes labels, histogram buckets.
SCRAPE_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "le", "__name__"}
REQUIRED_PANELS = {
    "Request rate",
    "Requests per second by method and code",
    "Errors by code",
    "Request latency (successful translations)",
    "Queue wait",
    "Batch size",
    "Batch tokens",
    "Decode step and encode time",
    "Tokens per second",
    "In flight and queued",
    "Model",
    "GPU utilisation",
    "GPU memory used",
}


@pytest.fixture(scope="module")
def promtool() -> Path:
    return require(debian_tools.find_prometheus, "Debian's Prometheus (promtool)").promtool


def run(*argv: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)


def server_series() -> dict[str, set[str]]:
    """Every series name the server exports (counters' _total, histograms' _bucket/_sum/_count...) -> its labels,
    read from the server's own registry after one observation of each labelled metric the queries use."""
    series: dict[str, set[str]] = {}
    metrics = ServerMetrics()
    metrics.count_request("Translate", "OK", "demo", 0.1)  # make labelled families emit their samples
    metrics.set_model("demo", "1", "fp32", "cpu")
    metrics.queue_capacity.labels("sentences").set(4096)
    metrics.abandoned.labels("queue").inc()
    for family in metrics.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def label_names(selector: str) -> set[str]:
    body = selector.split("{", 1)[1].rsplit("}", 1)[0] if "{" in selector else ""
    return set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", body))


# ---------------------------------------------------------------------------------------------------------------------
# Prometheus


def test_promtool_accepts_the_config_and_the_rules(promtool: Path, tmp_path: Path) -> None:
    config = run(promtool, "check", "config", PROMETHEUS / "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout + config.stderr
    rules = run(promtool, "check", "rules", PROMETHEUS / "rules" / "nmtserve.rules.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    # The Kubernetes PrometheusRule carries the same groups: promtool checks them as they are there.
    spec = yaml.safe_load((DEPLOY / "k8s/components/prometheus-operator/prometheusrule.yaml").read_text())["spec"]
    (tmp_path / "operator.rules.yml").write_text(yaml.safe_dump(spec))
    operator = run(promtool, "check", "rules", tmp_path / "operator.rules.yml")
    assert operator.returncode == 0, operator.stdout + operator.stderr


def test_rule_unit_tests_pass(promtool: Path) -> None:
    result = run(promtool, "test", "rules", PROMETHEUS / "tests" / "nmtserve.rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_cover_every_alert() -> None:
    tests = yaml.safe_load((PROMETHEUS / "tests" / "nmtserve.rules.test.yml").read_text())["tests"]
    firing = {case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case["exp_alerts"]}
    alerts = {q.name for q in pq.rule_queries() if q.source == "alert"}
    assert alerts == firing, f"alerts never shown to fire: {alerts - firing}"
    assert {
        "NmtserveHighLatencyP99",
        "NmtserveHighErrorRatio",
        "NmtserveQueueSaturated",
        "NmtserveNoModelLoaded",
        "NmtserveInstanceDown",
    } <= alerts


def test_prometheusrule_is_generated_from_the_rules_file() -> None:
    assert prometheusrule.main(["--check"]) == 0, "run python deploy/tools/prometheusrule.py"


def test_queue_saturation_is_relative_to_the_capacity_the_server_exports() -> None:
    """The threshold follows each server's own max_queue_size (no number to keep in step with config.toml)."""
    (expr,) = [q.expr for q in pq.rule_queries() if q.name == "NmtserveQueueSaturated"]
    assert re.search(
        r'> 0\.8 \* max by \(job, instance, model\) \(nmtserve_queue_capacity\{unit="sentences"\}\)', expr
    ), expr


def model_labelled_metrics() -> set[str]:
    """Series names of the server that carry a ``model`` label (per-model and request series)."""
    return {name for name, labels in server_series().items() if "model" in labels}


def test_rules_aggregate_and_alert_per_model() -> None:
    """Every aggregation over a model-labelled series keeps ``model`` (a flood on one model is reported for it, a
    quiet model does not dilute another's error ratio); every recording rule is at the ``job_model`` level."""
    labelled = model_labelled_metrics()
    for query in pq.rule_queries():
        if query.source == "record":
            assert query.name.startswith("job_model:"), query.name
        reads = {pq.metric_name(s) for s in pq.selectors(query.expr)}
        if not reads & labelled:
            continue
        for grouping in re.findall(r"\b(?:sum|max|min|avg) by \(([^)]*)\)", query.expr):
            assert "model" in [g.strip() for g in grouping.split(",")], f"{query.name}: by ({grouping}) drops model"


def test_every_dashboard_query_of_a_per_model_series_follows_the_model_variable() -> None:
    dashboard = pq.load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    model = variables["model"]
    assert model["type"] == "query" and model["includeAll"] and model["multi"] and model["allValue"] == ".*"
    assert "nmtserve_model_info" in model["definition"] and model["definition"].endswith(", name)")
    labelled = model_labelled_metrics()
    checked = 0
    for panel in pq.iter_panels(dashboard):
        for target in panel.get("targets", []):
            for selector in pq.selectors(target["expr"]):
                name = pq.metric_name(selector)
                if name in labelled:
                    assert 'model=~"$model"' in selector, f"{panel['title']}: {selector} ignores the model selector"
                    checked += 1
                elif name == "nmtserve_model_info":
                    assert 'name=~"$model"' in selector, f"{panel['title']}: {selector}"
    assert checked >= 20


def test_every_metric_and_label_read_exists_in_the_server() -> None:
    series = server_series()
    recorded = {q.name for q in pq.rule_queries() if q.source == "record"}
    queries = pq.dashboard_queries(pq.load_dashboard()) + pq.rule_queries()
    queries += [pq.Query("adapter", r["name"]["as"], r["seriesQuery"]) for r in pq.adapter_rules()]
    seen = set()
    for query in queries:
        for selector in pq.selectors(query.expr):
            name = pq.metric_name(selector)
            assert name, f"{query.name}: selector {selector} names no metric"
            if name.startswith(pq.EXTERNAL_METRIC_PREFIXES) or name == "up":
                continue
            if name in recorded:
                continue
            assert name in series, f"{query.source} {query.name}: {name} is not a metric of the server"
            unknown = label_names(selector) - series[name] - SCRAPE_LABELS
            assert not unknown, f"{query.source} {query.name}: {name} has no label(s) {unknown}"
            seen.add(name)
    expected = {
        "nmtserve_requests_total",
        "nmtserve_request_duration_seconds_bucket",
        "nmtserve_queue_wait_seconds_bucket",
        "nmtserve_batch_size_bucket",
        "nmtserve_batch_tokens_bucket",
        "nmtserve_decode_step_seconds_bucket",
        "nmtserve_tokens_total",
        "nmtserve_queue_depth",
        "nmtserve_inflight_requests",
        "nmtserve_model_info",
    }
    assert expected <= seen, expected - seen


# ---------------------------------------------------------------------------------------------------------------------
# Grafana


def test_dashboard_layout_variables_and_panels() -> None:
    dashboard = pq.load_dashboard()
    panels = list(pq.iter_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dashboard["uid"] == "nmtserve" and dashboard["schemaVersion"] >= 36
    titles = {p["title"] for p in panels}
    assert titles >= REQUIRED_PANELS, REQUIRED_PANELS - titles
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, f"{panel['title']} leaves the 24-column grid"
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", target["expr"])) - {"__rate_interval"}
            assert used <= set(variables), f"{panel['title']}: undefined variable(s) {used - set(variables)}"
            assert "rate(" not in target["expr"] or "[$__rate_interval]" in target["expr"], panel["title"]


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/nmtserve.yml").read_text())["providers"]
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["services"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["grafana"]["volumes"] if v.startswith(".."))
    assert mounts["../grafana/dashboards"] == providers[0]["options"]["path"]
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    (source,) = datasources
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    home = compose["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (
        home == f"{providers[0]['options']['path']}/nmtserve.json" and (GRAFANA / "dashboards/nmtserve.json").is_file()
    )


# ---------------------------------------------------------------------------------------------------------------------
# The compose stack


@pytest.fixture(scope="module")
def compose_spec() -> dict[str, Any]:
    return require(debian_tools.compose_schema, "the Compose schema (Debian's docker-compose package)")


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.gpu.yml"])
def test_compose_files_follow_the_compose_spec(compose_spec: dict[str, Any], name: str) -> None:
    document = yaml.safe_load((COMPOSE / name).read_text())
    jsonschema.Draft201909Validator(compose_spec).validate(document)


def test_compose_stack_builds_the_image_and_honours_the_drain() -> None:
    image = dm.parse(DEPLOY / "docker" / "Dockerfile")
    base = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["services"]
    gpu = yaml.safe_load((COMPOSE / "docker-compose.gpu.yml").read_text())["services"]
    for service, target in ((base["nmtserve"], "cpu"), (gpu["nmtserve"], "gpu")):
        build = service["build"]
        context = (COMPOSE / build["context"]).resolve()
        assert (context / build["dockerfile"]).resolve() == (DEPLOY / "docker" / "Dockerfile").resolve()
        assert build["target"] == target and target in image.stages
        assert service["image"].endswith(f"-{target}")
    server = base["nmtserve"]
    grace = float(server["stop_grace_period"].removesuffix("s"))
    drain = ServerConfig().drain_timeout_s
    assert grace >= drain + 5 and server["stop_signal"] == image.stages["cpu"].stopsignal
    assert SERVICE_NAME in server["healthcheck"]["test"][3]
    env = image.stages["cpu"].env
    published = {port.rsplit(":", 1)[1] for port in server["ports"]}
    assert published == {env["NMTSERVE_PORT"], env["NMTSERVE_HTTP_PORT"]}, "gRPC and HTTP, not /metrics"
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in (
        gpu["nmtserve"]["deploy"]["resources"]["reservations"]["devices"]
    )
    for name, service in base.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name}: {source} does not exist"
    prometheus_mount = next(v for v in base["prometheus"]["volumes"] if v.startswith("../prometheus:"))
    assert prometheus_mount.split(":")[1] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in base["prometheus"]["command"]
    targets = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"]
    assert targets[0]["targets"] == [f"nmtserve:{image.stages['cpu'].env['NMTSERVE_METRICS_PORT']}"]

"""Every PromQL expression the deployment ships, ready to run, and a small client of Prometheus's HTTP API.

The expressions come from three places: the Grafana dashboard's panel queries (with Grafana's variables expanded as
Grafana would), the recording and alerting rules, and the Prometheus adapter's metricsQuery templates (with the
adapter's placeholders filled in as the adapter would). The live-Prometheus test runs all of them against a real
Prometheus scraping a real server, and ``render_dashboard.py`` plots the dashboard's from the same code, so what is
tested is what is drawn.

``selectors`` finds the vector selectors of an expression (``name{matchers}``) with a small scanner, enough to ask
Prometheus whether each series an expression reads exists; it is not a full PromQL parser (Prometheus is the parser:
every expression is also run through its API).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "nmtserve.json"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "nmtserve.rules.yml"
ADAPTER = ROOT / "deploy" / "k8s" / "prometheus-adapter" / "values.yaml"

# Series that other exporters produce: NVIDIA's DCGM exporter (GPU panels) and kube-state-metrics (pod readiness).
# Without a GPU and a cluster they cannot have data; their expressions are checked to parse and evaluate only.
EXTERNAL_METRIC_PREFIXES = ("DCGM_", "kube_")

AGGREGATORS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
LABEL_LIST_KEYWORDS = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
OTHER_KEYWORDS = frozenset(["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"])
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
NUMBER = re.compile(r"(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:[a-z]+(?:\d+[a-z]+)*)?")


@dataclass(frozen=True)
class Query:
    """One shipped expression: where it comes from, its name there and the PromQL as written."""

    source: str  # "dashboard", "record", "alert" or "adapter"
    name: str  # "<panel title> / <refId>", the rule's name, or the adapter metric's name
    expr: str
    legend: str = ""
    panel_type: str = ""
    instant: bool = False

    @property
    def external(self) -> bool:
        """Reads only series of other exporters (DCGM, kube-state-metrics)."""
        names = [metric_name(s) for s in selectors(self.expr)]
        return bool(names) and all(n and n.startswith(EXTERNAL_METRIC_PREFIXES) for n in names)


# ---------------------------------------------------------------------------------------------------------------------
# Where the expressions are


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested (collapsed) panels included, in dashboard order."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[Query]:
    queries = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            queries.append(
                Query(
                    "dashboard",
                    f"{panel['title']} / {target.get('refId', '?')}",
                    target["expr"],
                    legend=target.get("legendFormat", ""),
                    panel_type=panel["type"],
                    instant=bool(target.get("instant")) and not target.get("range", False),
                )
            )
    return queries


def rule_queries(path: Path = RULES) -> list[Query]:
    document = yaml.safe_load(Path(path).read_text())
    queries = []
    for group in document["groups"]:
        for rule in group["rules"]:
            kind = "record" if "record" in rule else "alert"
            queries.append(Query(kind, rule[kind], rule["expr"]))
    return queries


def adapter_rules(path: Path = ADAPTER) -> list[dict[str, Any]]:
    return yaml.safe_load(Path(path).read_text())["rules"]["custom"]


# ---------------------------------------------------------------------------------------------------------------------
# Filling in placeholders


def expand_grafana(expr: str, variables: Mapping[str, str], rate_interval: str, interval: str | None = None) -> str:
    """``expr`` with Grafana's variables replaced: ``$__rate_interval``, ``$__interval`` and dashboard variables
    (``$name``, ``${name}``, ``${name:format}``), ``variables`` holding each one's value as Grafana would put it
    into the query (an "All" of a regex matcher is its allValue, e.g. ``.*``). Unknown variables are an error: a
    query that still holds a ``$`` would be a different query from the one Grafana sends."""
    builtins = {"__rate_interval": rate_interval, "__interval": interval or rate_interval, "__range": rate_interval}
    values = {**builtins, **variables}

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    pattern = re.compile(r"\$\{(?P<braced>[A-Za-z0-9_]+)(?::[a-z]+)?\}|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)")
    return pattern.sub(replace, expr)


def dashboard_variables(dashboard: Mapping[str, Any], values: Mapping[str, str] | None = None) -> dict[str, str]:
    """Values for the dashboard's variables: ``values`` where given, else an includeAll variable's allValue, else
    its current value. The datasource variable is not part of any expression and is left out."""
    result = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable["name"]
        if variable["type"] == "datasource":
            continue
        if values and name in values:
            result[name] = values[name]
        elif variable.get("includeAll") and variable.get("allValue"):
            result[name] = variable["allValue"]
        else:
            result[name] = str(variable.get("current", {}).get("value") or variable.get("query", ""))
    return result


def expand_adapter(template: str, series: str, label_matchers: str, group_by: str) -> str:
    """A metricsQuery with the Prometheus adapter's Go-template placeholders filled in."""
    out = template.replace("<<.Series>>", series).replace("<<.LabelMatchers>>", label_matchers)
    out = out.replace("<<.GroupBy>>", group_by)
    if "<<" in out:
        raise KeyError(f"unexpanded adapter placeholder in {out!r}")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Reading expressions


def _skip_string(s: str, i: int) -> int:
    quote, i = s[i], i + 1
    while i < len(s) and s[i] != quote:
        i += 2 if s[i] == "\\" and quote != "`" else 1
    return i + 1


def _skip_group(s: str, i: int, opening: str, closing: str) -> int:
    """Index after the bracket group opening at ``i`` (strings inside are skipped whole)."""
    depth = 0
    while i < len(s):
        c = s[i]
        if c in "\"'`":
            i = _skip_string(s, i)
            continue
        depth += c == opening
        depth -= c == closing
        i += 1
        if depth == 0:
            return i
    raise ValueError(f"unbalanced {opening}{closing} in {s!r}")


def _next_char(s: str, i: int) -> str:
    while i < len(s) and s[i].isspace():
        i += 1
    return s[i] if i < len(s) else ""


def selectors(expr: str) -> list[str]:
    """The vector selectors of ``expr``, e.g. ``['up{job="nmtserve"}', 'nmtserve_model_info']``, in order."""
    found, i, n = [], 0, len(expr)
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
        elif c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "[":
            i = _skip_group(expr, i, "[", "]")
        elif c == "{":  # a selector without a metric name: {__name__=~"..."}
            end = _skip_group(expr, i, "{", "}")
            found.append(expr[i:end])
            i = end
        elif c == "#":
            i = expr.find("\n", i) if "\n" in expr[i:] else n
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            match = NUMBER.match(expr, i)
            i = match.end() if match else i + 1
        elif IDENT.match(expr, i):
            match = IDENT.match(expr, i)
            assert match is not None
            word, i = match.group(0), match.end()
            following = _next_char(expr, i)
            lowered = word.lower()
            if lowered in LABEL_LIST_KEYWORDS:
                if following == "(":
                    i = _skip_group(expr, expr.index("(", i), "(", ")")
            elif lowered in OTHER_KEYWORDS or lowered in AGGREGATORS or following == "(":
                continue  # keyword, aggregation or function call: its arguments are scanned next
            else:
                if following == "{":
                    end = _skip_group(expr, expr.index("{", i), "{", "}")
                    found.append(word + expr[expr.index("{", i) : end])
                    i = end
                else:
                    found.append(word)
        else:
            i += 1
    return found


def metric_name(selector: str) -> str | None:
    """The metric name a selector matches: the identifier before ``{``, or an exact ``__name__="..."`` matcher."""
    if not selector.startswith("{"):
        return selector.split("{", 1)[0]
    match = re.search(r"__name__\s*=\s*\"([^\"]+)\"", selector)
    return match.group(1) if match else None


# ---------------------------------------------------------------------------------------------------------------------
# Prometheus's HTTP API


class PromQLError(RuntimeError):
    """Prometheus refused a query (a parse or evaluation error); the message is Prometheus's."""


class PrometheusAPI:
    """Just what the tests and the renderer need of /api/v1 (stdlib only)."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url, self.timeout = base_url.rstrip("/"), timeout

    def get(self, path: str, **params: Any) -> Any:
        url = f"{self.base_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:  # 400/422 carry Prometheus's JSON error
            try:
                body = json.loads(error.read())
            except ValueError:
                raise PromQLError(f"{url}: HTTP {error.code}") from None
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; the result vector (a scalar comes back as one sample without labels)."""
        data = self.get("/api/v1/query", query=expr, time=at)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self.get("/api/v1/query_range", query=expr, start=start, end=end, step=step)["result"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/-/ready", timeout=self.timeout) as response:
                return response.status == 200
        except OSError:
            return False

    def targets(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/targets")["activeTargets"]

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/rules")["groups"]

    def alerts(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/alerts")["alerts"]

"""Draw the Grafana dashboard's panels as PNG plots from a Prometheus, one image per dashboard row.

No Grafana runs here, so docs/deploy.md cannot show a screenshot; instead every panel's queries are run exactly as
the dashboard has them (Grafana variables expanded by promqueries.expand_grafana) and drawn with matplotlib, laid out
on the dashboard's own grid. Rows whose panels read only other exporters' series (the GPU row: NVIDIA's DCGM
exporter) are left out when those series do not exist, as they cannot without a GPU.

    python deploy/tools/local_stack.py --duration 90 --render docs/img    # the usual way: a stack with traffic
    python deploy/tools/render_dashboard.py --prometheus http://127.0.0.1:9090 --since 600 --out /tmp/plots
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promqueries import (
    PrometheusAPI,
    Query,
    dashboard_variables,
    expand_grafana,
    load_dashboard,
)

# Grafana unit -> (axis label, factor) for the plots; seconds are drawn in milliseconds, which the panels mostly are.
UNITS = {
    "s": ("ms", 1000.0),
    "reqps": ("requests/s", 1.0),
    "percent": ("%", 1.0),
    "percentunit": ("%", 100.0),
    "decmbytes": ("MB", 1.0),
    "watt": ("W", 1.0),
    "celsius": ("°C", 1.0),
    "short": ("", 1.0),
}


@dataclass
class RenderResult:
    """The images written and, per panel title, how many series its queries returned (0 = an empty panel)."""

    paths: list[Path] = field(default_factory=list)
    series: dict[str, int] = field(default_factory=dict)
    skipped_rows: list[str] = field(default_factory=list)


def _legend(template: str, labels: Mapping[str, str]) -> str:
    text = re.sub(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()
    return text or ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"


def _rows(dashboard: Mapping[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(row title, its panels) in order; panels before the first row go under the dashboard's title."""
    rows: list[tuple[str, list[dict[str, Any]]]] = []
    for panel in dashboard.get("panels", []):
        if panel["type"] == "row":
            rows.append((panel["title"], list(panel.get("panels", []))))
        elif rows:
            rows[-1][1].append(panel)
        else:
            rows.append((dashboard.get("title", ""), [panel]))
    return rows


def _is_external(panel: Mapping[str, Any]) -> bool:
    return all(Query("dashboard", "", t["expr"]).external for t in panel.get("targets", []))


def _plot_timeseries(ax, api: PrometheusAPI, panel, exprs, start, end, step) -> int:
    label, factor = UNITS.get(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"), ("", 1.0))
    count = 0
    for target, expr in exprs:
        for series in api.query_range(expr, start, end, step):
            xs = [float(t) - start for t, _ in series["values"]]
            ys = [float(v) * factor for _, v in series["values"]]
            if not any(math.isfinite(y) for y in ys):
                continue
            ax.plot(xs, ys, linewidth=1.2, label=_legend(target.get("legendFormat", ""), series["metric"]))
            count += 1
    ax.set_ylabel(label)
    ax.set_xlabel("seconds since the traffic started")
    ax.set_xlim(0, end - start)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if count:
        ax.legend(fontsize=7, loc="upper left", ncols=2)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="red")
    return count


def _format_stat(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"
    if unit == "percentunit":
        return f"{value * 100:.1f} %"
    if unit == "reqps":
        return f"{value:.1f} req/s"
    return f"{value:g}"


def _plot_stat(ax, api: PrometheusAPI, panel, exprs, end) -> int:
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    result = [sample for _, expr in exprs for sample in api.query(expr, end)]
    text = ", ".join(_format_stat(float(s["value"][1]), unit) for s in result) or "no data"
    ax.text(0.5, 0.45, text, ha="center", va="center", fontsize=20, transform=ax.transAxes,
            color="#1a7f37" if result else "red")  # fmt: skip
    ax.set_axis_off()
    return len(result)


def _plot_table(ax, api: PrometheusAPI, panel, exprs, end) -> int:
    result = [sample for _, expr in exprs for sample in api.query(expr, end)]
    ax.set_axis_off()
    if not result:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", color="red", transform=ax.transAxes)
        return 0
    columns = sorted({k for s in result for k in s["metric"] if k != "__name__"})
    cells = [[s["metric"].get(c, "") for c in columns] for s in result]
    table = ax.table(cellText=cells, colLabels=columns, loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(columns))))
    table.scale(1, 1.4)
    return len(result)


def render_dashboard(
    api: PrometheusAPI,
    start: float,
    end: float,
    out_dir: Path,
    dashboard: Mapping[str, Any] | None = None,
    variables: Mapping[str, str] | None = None,
    rate_interval: str = "10s",
    prefix: str = "deploy_dashboard_",
) -> RenderResult:
    """One PNG per dashboard row (``<prefix><row>.png`` in ``out_dir``) over [start, end] (Unix seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = dashboard or load_dashboard()
    values = dashboard_variables(dashboard, variables)
    step = max(1.0, round((end - start) / 240, 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    result = RenderResult()
    for title, panels in _rows(dashboard):
        panels = [p for p in panels if p.get("targets")]
        if not panels:
            continue
        queries = {
            p["id"]: [(t, expand_grafana(t["expr"], values, rate_interval)) for t in p["targets"]] for p in panels
        }
        if all(_is_external(p) for p in panels) and not any(
            api.query(e, end) for p in panels for _, e in queries[p["id"]]
        ):
            result.skipped_rows.append(title)
            continue
        top = min(p["gridPos"]["y"] for p in panels)
        height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) - top
        fig = plt.figure(figsize=(16, 0.55 * height + 0.6), layout="constrained")
        grid = fig.add_gridspec(height, 24)
        for panel in panels:
            pos = panel["gridPos"]
            ax = fig.add_subplot(grid[pos["y"] - top : pos["y"] - top + pos["h"], pos["x"] : pos["x"] + pos["w"]])
            ax.set_title(panel["title"], fontsize=10, loc="left")
            kind = panel["type"]
            if kind == "stat":
                n = _plot_stat(ax, api, panel, queries[panel["id"]], end)
            elif kind == "table":
                n = _plot_table(ax, api, panel, queries[panel["id"]], end)
            else:
                n = _plot_timeseries(ax, api, panel, queries[panel["id"]], start, end, step)
            result.series[panel["title"]] = n
        fig.suptitle(f"nmtserve dashboard: {title}", fontsize=12, x=0.01, ha="left")
        slug = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_").split("_nvidia")[0]
        path = out_dir / f"{prefix}{slug}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        result.paths.append(path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--since", type=float, default=600.0, help="plot the last this many seconds")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rate-interval", default="1m", help="what $__rate_interval becomes")
    args = parser.parse_args(argv)
    end = time.time()
    rendered = render_dashboard(
        PrometheusAPI(args.prometheus), end - args.since, end, args.out, rate_interval=args.rate_interval
    )
    for path in rendered.paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

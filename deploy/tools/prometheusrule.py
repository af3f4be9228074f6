"""Generate the Prometheus Operator's PrometheusRule from the plain rules file, so both carry the same rules.

    python deploy/tools/prometheusrule.py           # rewrite the PrometheusRule (deploy/k8s/components/...)
    python deploy/tools/prometheusrule.py --check   # exit 1 if it is out of date (a test runs this check)

One source of truth: deploy/prometheus/rules/nmtserve.rules.yml is what promtool checks and unit-tests and what the
live-Prometheus test evaluates; a PrometheusRule's ``spec`` is the same ``groups`` document, so it is generated
rather than maintained by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "nmtserve.rules.yml"
OUTPUT = ROOT / "deploy" / "k8s" / "components" / "prometheus-operator" / "prometheusrule.yaml"
HEADER = """\
# GENERATED from deploy/prometheus/rules/nmtserve.rules.yml by deploy/tools/prometheusrule.py; do not edit by hand.
# The Prometheus Operator loads these rules into the Prometheus that selects this object (kube-prometheus-stack's
# selects by its release label: set it to your release's name).
"""


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL expressions) as literal blocks, as they are written in the rules file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def prometheus_rule(rules: dict[str, Any]) -> dict[str, Any]:
    """A monitoring.coreos.com/v1 PrometheusRule whose spec is the rules file's document."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "nmtserve",
            "labels": {"app.kubernetes.io/name": "nmtserve", "release": "kube-prometheus-stack"},
        },
        "spec": {"groups": rules["groups"]},
    }


def render(rules_path: Path = RULES) -> str:
    rules = yaml.safe_load(rules_path.read_text())
    body = yaml.dump(prometheus_rule(rules), Dumper=_BlockDumper, sort_keys=False, width=120, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the generated file is up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run python deploy/tools/prometheusrule.py")
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

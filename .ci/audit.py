"""Audit the serving dependencies for known vulnerabilities: the CI step after ``make test`` (``make audit``).

1. Resolve exactly what the serving install (``pip install ".[cpu]"``, i.e. ``make demo``) would install, with
   pip's own resolver (``--dry-run --report``), into a pinned list: ``OUT/serve-requirements.txt``.
2. Run ``pip-audit`` on that list (``--no-deps --disable-pip``: the list is already complete), using PyPI's
   vulnerability service (it lives on the registry host: ``/pypi/<name>/<version>/json``).
3. Behind registry mirrors that serve only ``/pypi/<name>/json`` (this happens: pip-audit then says "not found
   on PyPI" for every package), fall back to that endpoint, whose ``vulnerabilities`` describe the project's
   latest release: a package pinned at its latest version is audited that way; any other is reported as not
   audited.

Prints one line per package and writes ``OUT/audit.json``. Exit status: 1 when a known vulnerability affects a
serving dependency (``NMTSERVE_AUDIT_IGNORE=ID,ID`` accepts named ones), else 0 -- network trouble beyond the
registry makes packages "not audited" (a warning), never a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/pypi"


def resolve_serving(out: Path) -> list[tuple[str, str]]:
    """(name, version) of every package the serving install would bring, nmtserve itself excluded."""
    report = out / "pip-report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    command += ["--report", str(report), f"{ROOT}[cpu]"]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"audit: pip could not resolve the serving install:\n{completed.stderr[-2000:]}")
    items = json.loads(report.read_text())["install"]
    pins = [(i["metadata"]["name"], i["metadata"]["version"]) for i in items]
    return sorted((name, version) for name, version in pins if name.lower() != "nmtserve")


def run_pip_audit(requirements: Path, out: Path) -> dict[str, dict]:
    """{normalised name: pip-audit's entry} (``vulns`` or ``skip_reason``); empty if pip-audit failed to run."""
    result_path = out / "pip-audit.json"
    command = [sys.executable, "-m", "pip_audit", "-r", str(requirements), "--no-deps", "--disable-pip"]
    command += ["--progress-spinner", "off", "--format", "json", "--output", str(result_path)]
    completed = subprocess.run(command, capture_output=True, text=True)
    try:
        data = json.loads(result_path.read_text())
    except (OSError, json.JSONDecodeError):
        print(f"audit: pip-audit did not produce a report ({completed.stderr.strip()[-300:]})", file=sys.stderr)
        return {}
    return {normalise(d["name"]): d for d in data.get("dependencies", [])}


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def latest_release_vulns(name: str, version: str) -> tuple[str, list[dict]]:
    """("audited", vulns) when ``version`` is the project's latest release, else ("not audited: why", [])."""
    try:
        with urllib.request.urlopen(f"{PYPI}/{name}/json", timeout=30) as response:
            data = json.load(response)
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as error:
        return f"not audited: {PYPI} unreachable ({error})", []
    latest = data.get("info", {}).get("version")
    if latest != version:
        return f"not audited: pinned {version}, PyPI's project data describe {latest}", []
    vulns = [v for v in data.get("vulnerabilities", []) if not v.get("withdrawn")]
    return "audited (PyPI project JSON, latest release)", [
        {"id": v.get("id"), "aliases": v.get("aliases", []), "fix_versions": v.get("fixed_in", [])} for v in vulns
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "audit")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ignore = {v.strip() for v in os.environ.get("NMTSERVE_AUDIT_IGNORE", "").split(",") if v.strip()}

    pins = resolve_serving(args.out)
    requirements = args.out / "serve-requirements.txt"
    requirements.write_text("".join(f"{name}=={version}\n" for name, version in pins))
    audited = run_pip_audit(requirements, args.out)
    rows, vulnerable, unaudited = [], [], []
    for name, version in pins:
        entry = audited.get(normalise(name), {})
        if "vulns" in entry:
            how, vulns = "audited (pip-audit, PyPI)", entry["vulns"]
        else:
            how, vulns = latest_release_vulns(name, version)
        vulns = [v for v in vulns if v["id"] not in ignore and not ignore.intersection(v.get("aliases", []))]
        rows.append({"name": name, "version": version, "how": how, "vulns": vulns})
        if vulns:
            vulnerable.append(name)
        if how.startswith("not audited"):
            unaudited.append(name)
        ids = ", ".join(v["id"] for v in vulns) or (
            "-" if how.startswith("not audited") else "no known vulnerabilities"
        )
        print(f"audit: {name}=={version}: {how}: {ids}")
    report = {
        "serving_dependencies": rows,
        "vulnerable": vulnerable,
        "not_audited": unaudited,
        "ignored": sorted(ignore),
    }
    (args.out / "audit.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"audit: {len(pins)} serving dependencies, {len(pins) - len(unaudited)} audited, "
        f"{len(vulnerable)} with known vulnerabilities; report in {args.out / 'audit.json'}"
    )
    if unaudited:
        print(f"audit: WARNING: not audited: {', '.join(unaudited)}", file=sys.stderr)
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())

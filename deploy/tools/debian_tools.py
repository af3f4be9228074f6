"""Tools from Debian's packages for the deployment tests and ``local_stack.py``: the Prometheus server and promtool,
and the Compose file JSON schema (from Debian's docker-compose package) to validate the compose files offline.

Where Prometheus comes from, first match wins:

1. ``$PROMETHEUS_BIN_DIR`` (a folder holding ``prometheus`` and ``promtool``);
2. ``prometheus`` and ``promtool`` on ``PATH`` (e.g. after ``apt-get install prometheus``);
3. Debian's ``prometheus`` package, downloaded with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into a
   cache folder (``$NMTSERVE_DEPLOY_CACHE``, default ``~/.cache/nmtserve/deploy``), as every package here is.

Why the third way rather than ``apt-get install``: it needs no root, starts no system service, leaves the machine's
packages alone, and works the same on a developer's machine and in CI. The binaries are static Go programs that need
only libc. When the machine's apt lists are missing or stale, a private ``apt-get update`` (its own state folder, the
mirror named in the machine's apt sources) fetches fresh ones; the system's apt state is never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path.home() / ".cache" / "nmtserve" / "deploy"


class ToolUnavailable(RuntimeError):
    """A tool is neither installed nor obtainable from Debian's packages; the message says what failed."""


PrometheusUnavailable = ToolUnavailable


@dataclass(frozen=True)
class PrometheusTools:
    """The two binaries and the version ``prometheus --version`` reports."""

    prometheus: Path
    promtool: Path
    version: str
    source: str  # "PROMETHEUS_BIN_DIR", "PATH" or "debian package <file>"


def cache_dir() -> Path:
    return Path(os.environ.get("NMTSERVE_DEPLOY_CACHE", DEFAULT_CACHE))


def _version(prometheus: Path) -> str:
    out = subprocess.run([str(prometheus), "--version"], capture_output=True, text=True, timeout=30, check=True)
    match = re.search(r"version (\S+)", out.stdout + out.stderr)
    if not match:
        raise ToolUnavailable(f"{prometheus} --version printed no version: {out.stdout!r}")
    return match.group(1)


def _tools(folder: Path, source: str) -> PrometheusTools | None:
    prometheus, promtool = folder / "prometheus", folder / "promtool"
    if prometheus.is_file() and promtool.is_file() and os.access(prometheus, os.X_OK):
        return PrometheusTools(prometheus, promtool, _version(prometheus), source)
    return None


def _os_codename() -> str:
    text = Path("/etc/os-release").read_text()
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    if not match:
        raise ToolUnavailable("cannot tell the Debian release from /etc/os-release")
    return match.group(1)


def _private_apt_options(root: Path) -> list[str]:
    """apt options that point every piece of state at ``root``: lists, archives cache, sources."""
    return [
        "-o", f"Dir::State::Lists={root / 'lists'}",
        "-o", f"Dir::Cache={root / 'cache'}",
        "-o", f"Dir::Etc::SourceList={root / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", "APT::Get::List-Cleanup=0",
    ]  # fmt: skip


def _private_apt_update(root: Path) -> list[str]:
    """Fetch the release's package lists into ``root`` (no root needed); the options for later apt calls."""
    from nmtserve.model.data.apt import mirror_uri  # the corpus builder's reading of the machine's apt sources

    uri, codename = mirror_uri(), _os_codename()
    (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (root / "sources.list").write_text(f"deb {uri} {codename} main\ndeb {uri} {codename}-updates main\n")
    options = _private_apt_options(root)
    subprocess.run(["apt-get", "update", *options], check=True, capture_output=True, text=True, timeout=600)
    return options


def _download_deb(package: str, dest: Path) -> Path:
    """``apt-get download PACKAGE`` into ``dest``: with the machine's lists, else with freshly fetched ones."""
    errors = []
    for attempt in ("system lists", "private lists"):
        try:
            options = [] if attempt == "system lists" else _private_apt_update(dest / "apt")
            subprocess.run(
                ["apt-get", "download", *options, package], cwd=dest, check=True, capture_output=True, text=True,
                timeout=600,
            )  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, PrometheusUnavailable) as error:
            detail = getattr(error, "stderr", None) or str(error)
            errors.append(f"{attempt}: {detail.strip()[-500:]}")
            continue
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if debs:
            return debs[-1]
        errors.append(f"{attempt}: apt-get download left no {package}_*.deb")
    raise ToolUnavailable(f"could not download Debian's {package} package: " + " | ".join(errors))


def debian_package(package: str, cache: Path | None = None) -> Path:
    """The root folder of Debian's ``package`` unpacked in the cache (downloaded once; a half-done unpack is never
    used: it is renamed into place only when complete). Its SOURCE file names the .deb it came from."""
    cache = cache or cache_dir()
    target = cache / package
    if (target / "SOURCE").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt drops to its _apt user for downloads when it can
        deb = _download_deb(package, work)
        unpacked = work / "root"
        try:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, capture_output=True, timeout=300)
        except (subprocess.CalledProcessError, OSError) as error:
            raise ToolUnavailable(f"dpkg-deb -x {deb.name} failed: {error}") from None
        (unpacked / "SOURCE").write_text(deb.name)
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return target


def find_prometheus(download: bool = True) -> PrometheusTools:
    """The Prometheus binaries (see the module docstring for the order); ToolUnavailable if there are none."""
    if os.environ.get("PROMETHEUS_BIN_DIR"):
        tools = _tools(Path(os.environ["PROMETHEUS_BIN_DIR"]), "PROMETHEUS_BIN_DIR")
        if tools is None:
            raise ToolUnavailable(f"PROMETHEUS_BIN_DIR={os.environ['PROMETHEUS_BIN_DIR']} lacks the binaries")
        return tools
    on_path = shutil.which("prometheus"), shutil.which("promtool")
    if on_path[0] and on_path[1] and Path(on_path[0]).parent == Path(on_path[1]).parent:
        tools = _tools(Path(on_path[0]).parent, "PATH")
        if tools is not None:
            return tools
    cached = cache_dir() / "prometheus"
    if not download and not (cached / "SOURCE").is_file():
        raise ToolUnavailable("no prometheus/promtool on PATH or in the cache, and downloading is off")
    root = debian_package("prometheus")
    tools = _tools(root / "usr" / "bin", f"debian package {(root / 'SOURCE').read_text()}")
    if tools is None:
        raise ToolUnavailable(
            f"Debian's prometheus package unpacked to {root} holds no usr/bin/prometheus and promtool"
        )
    return tools


def compose_schema() -> dict:
    """The Compose specification's JSON schema as Debian's docker-compose (1.29) ships it: enough to catch unknown
    keys and wrong types in the compose files without a Docker engine or the compose plugin."""
    root = debian_package("docker-compose")
    hits = sorted(root.glob("usr/lib/python3/dist-packages/compose/config/compose_spec.json"))
    if not hits:
        raise ToolUnavailable(f"no compose_spec.json in Debian's docker-compose package at {root}")
    return json.loads(hits[0].read_text())


if __name__ == "__main__":
    found = find_prometheus()
    print(f"prometheus {found.version}: {found.prometheus} and {found.promtool} ({found.source})")

"""Shared apt helpers: find the configured Debian mirror, fetch i18n lists with private state, download debs.

Everything goes through apt itself (no hard-coded host, no HTTP client of our own) so the corpus comes from
exactly the mirror the machine is configured for, and the system's apt state is never touched.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

APT_HELPER = "/usr/lib/apt/apt-helper"


def mirror_uri(
    sources_dir: Path = Path("/etc/apt/sources.list.d"), sources_list: Path = Path("/etc/apt/sources.list")
) -> str:
    """Return the first Debian (non-security) archive URI named in the system's apt configuration.

    deb822 `.sources` files are read first (Debian 12+ default), then the legacy one-line format.
    """
    candidates: list[str] = []
    for f in sorted(sources_dir.glob("*.sources")) if sources_dir.is_dir() else []:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip().lower().startswith("uris:"):
                candidates.extend(line.split(":", 1)[1].split())
    if sources_list.is_file():
        for line in sources_list.read_text(encoding="utf-8").splitlines():
            parts = line.split("#", 1)[0].split()
            if parts and parts[0] == "deb":
                uri = next((p for p in parts[1:] if not p.startswith("[")), None)
                if uri:
                    candidates.append(uri)
    for uri in candidates:
        if "debian" in uri and "security" not in uri and "debian-ports" not in uri:
            return uri.rstrip("/")
    raise RuntimeError("no Debian archive URI found in the apt sources")


def fetch_translation_lists(cache_dir: Path, suites: list[str], uri: str | None = None) -> Path:
    """Run `apt-get update` against a private state dir to fetch Translation-en/de of `suites` main.

    Reuses the lists if all expected files are already present. Returns the private lists directory.
    """
    root = cache_dir.resolve() / "apt-ddtp"  # absolute: apt resolves relative Dir:: paths under /var
    lists = root / "lists"
    want = [f"_dists_{s}_main_i18n_Translation-{lang}" for s in suites for lang in ("en", "de")]
    if lists.is_dir() and all(any(w in p.name for p in lists.iterdir()) for w in want):
        return lists
    uri = uri or mirror_uri()
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (root / "sources.list").write_text("".join(f"deb {uri} {s} main\n" for s in suites), encoding="utf-8")
    subprocess.run(
        [
            "apt-get",
            "update",
            "-o", f"Dir::State::Lists={lists}",
            "-o", f"Dir::Cache={root / 'cache'}",
            "-o", f"Dir::Etc::SourceList={root / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", "Acquire::Languages=en,de",
            "-o", "APT::Get::List-Cleanup=0",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    missing = [w for w in want if not any(w in p.name for p in lists.iterdir())]
    if missing:
        raise RuntimeError(f"apt-get update did not fetch: {missing}")
    return lists


def find_list(lists: Path, suite: str, lang: str) -> Path:
    """The (possibly compressed) Translation file for `suite`/`lang` inside a lists directory."""
    hits = sorted(p for p in lists.iterdir() if f"_dists_{suite}_main_i18n_Translation-{lang}" in p.name)
    if not hits:
        raise FileNotFoundError(f"Translation-{lang} for {suite} not in {lists}")
    return hits[0]


def release_date(lists: Path, suite: str) -> str | None:
    """The `Date:` of a suite's InRelease file, recorded so a build says which archive state it saw."""
    for p in lists.glob(f"*_dists_{suite}_InRelease"):
        m = re.search(r"^Date: (.+)$", p.read_text(encoding="utf-8", errors="replace"), re.M)
        if m:
            return m.group(1).strip()
    return None


def read_list(path: Path) -> str:
    """Decompress an apt list file (lz4, xz, gz, ...) with apt's own helper; plain files are read as-is."""
    if path.suffix in {".lz4", ".xz", ".gz", ".bz2", ".zst", ".lzma"}:
        out = subprocess.run([APT_HELPER, "cat-file", str(path)], check=True, capture_output=True).stdout
        return out.decode("utf-8", errors="replace")
    return path.read_text(encoding="utf-8", errors="replace")


def download_debs(names: list[str], deb_dir: Path) -> dict[str, Path]:
    """`apt-get download` each package into deb_dir unless a .deb for it is already cached there."""
    deb_dir = deb_dir.resolve()
    deb_dir.mkdir(parents=True, exist_ok=True)

    def cached(name: str) -> Path | None:
        hits = sorted(deb_dir.glob(f"{name}_*.deb"))
        return hits[-1] if hits else None

    todo = [n for n in names if cached(n) is None]
    if todo:
        subprocess.run(["apt-get", "download", *todo], cwd=deb_dir, check=True, capture_output=True)
    out: dict[str, Path] = {}
    for n in names:
        p = cached(n)
        if p is None:
            raise RuntimeError(f"apt-get download did not produce {n}")
        out[n] = p
    return out


def deb_field(deb: Path, field: str) -> str:
    """A control field (e.g. Version) of a .deb, read with dpkg-deb."""
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], check=True, capture_output=True, text=True
    ).stdout.strip()


def extract_deb(deb: Path, dest: Path) -> Path:
    """Unpack a .deb's data into dest (once; a marker file makes re-runs free)."""
    marker = dest / ".extracted"
    if not marker.exists():
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
        marker.write_text(deb.name, encoding="utf-8")
    return dest


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

"""Fast, offline tests for the corpus builder: each parser on a tiny fixture, the cleaner, the split logic."""

from __future__ import annotations

import struct
import zipfile
from collections import Counter
from pathlib import Path

from nmtserve.model.data import ddtp, debian_reference, firefox, libreoffice_help, libreoffice_ui
from nmtserve.model.data.apt import mirror_uri
from nmtserve.model.data.build import assemble_splits
from nmtserve.model.data.clean import CleanConfig, clean_pairs, drop_reason, normalize, split_sentences

CFG = CleanConfig()

TRANSLATION_EN = """Package: foo
Description-md5: aaa
Description-en: tool to frobnicate files
 Foo frobnicates files quickly
 and safely.
 .
 Features:
  * fast
  * safe

Package: bar
Description-md5: bbb
Description-en: bar library
 First paragraph.
 .
 Second paragraph.

Package: onlyen
Description-md5: ccc
Description-en: untranslated thing
"""

TRANSLATION_DE = """Package: foo
Description-md5: aaa
Description-de: Werkzeug zum Frobnizieren von Dateien
 Foo frobniziert Dateien schnell
 und sicher.
 .
 Merkmale:
  * schnell
  * sicher

Package: bar
Description-md5: bbb
Description-de: Bar-Bibliothek
 Nur ein Absatz.
"""


def test_ddtp_pairs_by_md5_and_paragraph(tmp_path: Path) -> None:
    (tmp_path / "en").write_text(TRANSLATION_EN, encoding="utf-8")
    (tmp_path / "de").write_text(TRANSLATION_DE, encoding="utf-8")
    pairs = list(ddtp.iter_pairs(tmp_path / "en", tmp_path / "de"))
    assert pairs == [
        ("tool to frobnicate files", "Werkzeug zum Frobnizieren von Dateien"),
        ("Foo frobnicates files quickly and safely.", "Foo frobniziert Dateien schnell und sicher."),
        ("Features:", "Merkmale:"),
        ("fast", "schnell"),
        ("safe", "sicher"),
        # bar: paragraph counts differ (2 vs 1) -> synopsis only
        ("bar library", "Bar-Bibliothek"),
    ]
    assert not any("untranslated" in en for en, _ in pairs)


def _write_mo(path: Path, entries: list[tuple[str, str]]) -> None:
    """Minimal GNU .mo writer (little endian), entries sorted by msgid as msgfmt does."""
    entries = sorted([("", "Content-Type: text/plain; charset=UTF-8\n"), *entries])
    ids = [e[0].encode() for e in entries]
    strs = [e[1].encode() for e in entries]
    n = len(entries)
    o_orig, o_trans = 28, 28 + 8 * n
    data_off = 28 + 16 * n
    orig_tab, trans_tab, blob = b"", b"", b""
    for s in ids:
        orig_tab += struct.pack("<2I", len(s), data_off + len(blob))
        blob += s + b"\0"
    for s in strs:
        trans_tab += struct.pack("<2I", len(s), data_off + len(blob))
        blob += s + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, n, o_orig, o_trans, 0, data_off)
    path.write_bytes(header + orig_tab + trans_tab + blob)


def test_libreoffice_mo_context_plural_and_mnemonics(tmp_path: Path) -> None:
    _write_mo(
        tmp_path / "sw.mo",
        [
            ("STR_OPEN\x04~Open File", "Datei ö~ffnen"),
            ("_Save As", "Speichern _unter"),
            ("%1 page\x00%1 pages", "%1 Seite\x00%1 Seiten"),
            ("untranslated", ""),
        ],
    )
    entries = libreoffice_ui.read_mo(tmp_path / "sw.mo")
    assert ("STR_OPEN", "~Open File", "Datei ö~ffnen") in entries
    pairs = sorted(libreoffice_ui.iter_pairs(tmp_path))
    assert pairs == sorted(
        [
            ("Open File", "Datei öffnen"),
            ("Save As", "Speichern unter"),
            ("%1 page", "%1 Seite"),
            ("%1 pages", "%1 Seiten"),
        ]
    )


HELP_EN = """<html><body>
<h1 id="hd_id1" dir="auto">Advanced</h1>
<p id="par_id2" class="paragraph">Choose <span class="switchinline"><span hidden="true" id="MACx">
<span class="emph">LibreOffice - Preferences</span></span><span hidden="true" id="defaultx">
<span class="emph">Tools - Options</span></span></span> now.</p>
<p id="par_id3">Only in English.</p>
<script>var x = 1;</script>
</body></html>"""
HELP_DE = """<html><body>
<h1 id="hd_id1" dir="auto">Erweitert</h1>
<p id="par_id2" class="paragraph">Wählen Sie <span class="switchinline"><span hidden="true" id="MACx">
<span class="emph">LibreOffice – Einstellungen</span></span><span hidden="true" id="defaultx">
<span class="emph">Extras – Optionen</span></span></span> jetzt.</p>
</body></html>"""


def test_libreoffice_help_aligns_by_path_and_id(tmp_path: Path) -> None:
    for lang, text in (("en-US", HELP_EN), ("de", HELP_DE)):
        d = tmp_path / lang / "text" / "shared"
        d.mkdir(parents=True)
        (d / "java.html").write_text(text, encoding="utf-8")
    (tmp_path / "en-US" / "text" / "shared" / "enonly.html").write_text(HELP_EN, encoding="utf-8")
    pairs = list(libreoffice_help.iter_pairs(tmp_path / "en-US", tmp_path / "de"))
    assert pairs == [
        ("Advanced", "Erweitert"),
        ("Choose Tools - Options now.", "Wählen Sie Extras – Optionen jetzt."),
    ]


FTL_EN = """# comment
-brand-short-name = Firefox
about-title =
    .title = About { -brand-short-name }
update-button = Restart to update
    .accesskey = R
long-msg =
    This is a long
    message.
tabs = { $count ->
    [one] One tab
   *[other] { $count } tabs
}
link-text = Read the <a data-l10n-name="x">notes</a>
"""
FTL_DE = """-brand-short-name = Firefox
about-title =
    .title = Über { -brand-short-name }
update-button = Neu starten zum Aktualisieren
    .accesskey = N
long-msg =
    Dies ist eine lange
    Nachricht.
tabs = { $count ->
    [one] Ein Tab
   *[other] { $count } Tabs
}
link-text = Lesen Sie die <a data-l10n-name="x">Hinweise</a>
"""
PROPS_EN = (
    "# c\nfileNotFound = The file %S cannot be found.\ndownloads = One download;#1 downloads\nwrapped = a \\\n  b\n"
)
PROPS_DE = (
    "fileNotFound = Die Datei %S wurde nicht gefunden.\ndownloads = Ein Download;#1 Downloads\nwrapped = x \\\n  y\n"
)


def test_firefox_ftl_and_properties(tmp_path: Path) -> None:
    ftl = firefox.parse_ftl(FTL_EN)
    assert ftl["about-title.title"] == "About { -brand-short-name }"
    assert ftl["long-msg"] == "This is a long message."
    assert "tabs" not in ftl
    assert firefox.parse_properties(PROPS_EN)["wrapped"] == "a b"
    omni, langpack = tmp_path / "omni.ja", tmp_path / "lp.xpi"
    with zipfile.ZipFile(omni, "w") as z:
        z.writestr("localization/en-US/browser/about.ftl", FTL_EN)
        z.writestr("chrome/en-US/locale/browser/app.properties", PROPS_EN)
    with zipfile.ZipFile(langpack, "w") as z:
        z.writestr("browser/localization/de/browser/about.ftl", FTL_DE)
        z.writestr("browser/chrome/de/locale/browser/app.properties", PROPS_DE)
    pairs = sorted(firefox.iter_pairs([(omni, "browser/")], langpack))
    assert pairs == sorted(
        [
            ("About Firefox", "Über Firefox"),
            ("Restart to update", "Neu starten zum Aktualisieren"),
            ("This is a long message.", "Dies ist eine lange Nachricht."),
            ("Read the notes", "Lesen Sie die Hinweise"),
            ("The file %S cannot be found.", "Die Datei %S wurde nicht gefunden."),
            ("One download", "Ein Download"),
            ("#1 downloads", "#1 Downloads"),
            ("a b", "x y"),
        ]
    )


REF_EN = """<?xml version="1.0" encoding="UTF-8"?><html xmlns="http://www.w3.org/1999/xhtml"><body>
<div class="navheader"><table><tr><td>Prev chapter navigation text here</td></tr></table></div>
<h2 class="title">2.1. Debian package management basics</h2>
<p>The <code class="literal">apt</code> tool installs packages from the archive.</p>
<pre class="screen">$ sudo apt-get install foo bar baz</pre>
<ul><li><p>Use the <code>aptitude</code> command for interactive package management.</p></li></ul>
<p><code>apt-get install foo bar baz qux</code></p>
<table><tr><td>package-name-only</td></tr></table>
</body></html>"""
REF_DE = """<?xml version="1.0" encoding="UTF-8"?><html xmlns="http://www.w3.org/1999/xhtml"><body>
<div class="navheader"><table><tr><td>Zurück Kapitel Navigation Text hier</td></tr></table></div>
<h2 class="title">2.1. Grundlagen der Debian-Paketverwaltung</h2>
<p>Das Werkzeug <code class="literal">apt</code> installiert Pakete aus dem Archiv.</p>
<pre class="screen">$ sudo apt-get install foo bar baz</pre>
<ul><li><p>Verwenden Sie den Befehl <code>aptitude</code> für die interaktive Paketverwaltung.</p></li></ul>
<p><code>apt-get install foo bar baz qux</code></p>
<table><tr><td>package-name-only</td></tr></table>
</body></html>"""


def test_debian_reference_alignment_and_code_filter(tmp_path: Path) -> None:
    (tmp_path / "ch02.en.html").write_text(REF_EN, encoding="utf-8")
    (tmp_path / "ch02.de.html").write_text(REF_DE, encoding="utf-8")
    pairs = list(debian_reference.iter_pairs(tmp_path, tmp_path))
    assert pairs == [
        ("2.1. Debian package management basics", "2.1. Grundlagen der Debian-Paketverwaltung"),
        (
            "The apt tool installs packages from the archive.",
            "Das Werkzeug apt installiert Pakete aus dem Archiv.",
        ),
        (
            "Use the aptitude command for interactive package management.",
            "Verwenden Sie den Befehl aptitude für die interaktive Paketverwaltung.",
        ),
    ]
    assert debian_reference.is_code_like("$ ls -l /etc/apt here", "$ ls -l /etc/apt hier")


def test_debian_reference_split_is_stable_and_covers_both() -> None:
    texts = [f"Sentence number {i} about Debian." for i in range(200)]
    splits = [debian_reference.split_of(t) for t in texts]
    assert splits == [debian_reference.split_of(t) for t in texts]
    assert 60 < splits.count("dev") < 140


def test_cleaner_rules() -> None:
    assert normalize("  a\u00a0 b\n c ") == "a b c"
    assert drop_reason("", "x", CFG) == "empty"
    assert drop_reason("Save", "Save", CFG) == "identical"
    assert drop_reason("{ $count }", "{ $count } ", CFG) is not None
    assert drop_reason("%1 %2", "%2 %1", CFG) == "no_letters"
    assert drop_reason("word " * 70, "Wort " * 70, CFG) == "too_long"
    assert drop_reason("x" * 400, "y" * 400, CFG) == "too_long"
    assert drop_reason("A short sentence here.", "Ein sehr, sehr, sehr, sehr, sehr, sehr, sehr langer Satz.", CFG) == (
        "length_ratio"
    )
    assert drop_reason("Zoom", "Vergrößerung", CFG) is None  # short strings are exempt from the ratio rule
    assert drop_reason("Open the file.", "Öffnen Sie die Datei.", CFG) is None


def test_sentence_split_and_dedup() -> None:
    assert split_sentences("Use e.g. this. Then z. B. das. Done!") == [
        "Use e.g. this.",
        "Then z. B. das.",
        "Done!",
    ]
    en = "The first sentence is here and fairly long. " * 2 + "The third sentence closes the paragraph nicely."
    de = "Der erste Satz steht hier und ist lang. " * 2 + "Der dritte Satz schließt den Absatz schön ab."
    stats: Counter[str] = Counter()
    out = list(clean_pairs([(en, de), ("Open", "Öffnen"), ("Open", "Öffnen")], CFG, stats))
    assert out == [
        ("The first sentence is here and fairly long.", "Der erste Satz steht hier und ist lang."),
        ("The third sentence closes the paragraph nicely.", "Der dritte Satz schließt den Absatz schön ab."),
        ("Open", "Öffnen"),
    ]
    assert stats["duplicate"] == 2 and stats["kept"] == 3


def test_assemble_removes_train_overlap_and_dedups_across_sources() -> None:
    held = [
        ("Install the package with apt.", "Installieren Sie das Paket mit apt."),
        ("Reboot the system after upgrading.", "Starten Sie das System nach dem Upgrade neu."),
    ]
    sources = {
        "a": lambda: [
            ("install the package with APT.", "Etwas ganz anderes."),  # EN side overlaps (case-insensitive)
            (
                "Restart the machine once upgraded.",
                "Starten Sie das System nach dem Upgrade neu.",
            ),  # DE side overlaps
            ("Open the file.", "Öffnen Sie die Datei."),
        ],
        "b": lambda: [
            ("Open the file.", "Öffnen Sie die Datei."),
            ("Close the file.", "Schließen Sie die Datei."),
        ],
    }
    splits, stats = assemble_splits(sources, held, CFG)
    assert sorted(splits["train"]) == [
        ("Close the file.", "Schließen Sie die Datei."),
        ("Open the file.", "Öffnen Sie die Datei."),
    ]
    assert stats["train_removed_overlapping_dev_test"] == 2
    assert stats["train_cross_source_duplicates"] == 1
    assert stats["raw_pairs"] == {"a": 3, "b": 2, "debian_reference": 2}
    assert sorted(splits["dev"] + splits["test"]) == sorted(held)
    for en, _ in splits["dev"]:
        assert debian_reference.split_of(en) == "dev"


def test_mirror_uri_from_deb822_and_legacy(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: x\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n",
        encoding="utf-8",
    )
    assert mirror_uri(d, tmp_path / "none") == "http://mirror.example/debian"
    legacy = tmp_path / "sources.list"
    legacy.write_text("# c\ndeb [arch=amd64] http://legacy.example/debian bookworm main\n", encoding="utf-8")
    assert mirror_uri(tmp_path / "nodir", legacy) == "http://legacy.example/debian"

"""HTML documents and fragments: text nodes and the attributes people read are translated; everything else (tags,
other attributes, comments, doctype, document structure) is kept.

The attributes are those the HTML standard lists as translatable (its ``translate`` attribute's definition):
``title`` anywhere, ``alt`` of images, areas and inputs, ``placeholder`` of inputs and text areas, ``label`` of
options, option groups and tracks, ``abbr`` of table headers, the ``value`` of button-like inputs, and the
``content`` of ``<meta name="description">`` and ``keywords``; and ``aria-label`` anywhere, which screen readers
speak.

Parsing is html5lib's, the WHATWG algorithm browsers use, so malformed markup is recovered exactly as a browser
would recover it and the output is always well formed.

Entities: the parser resolves every character reference to its character and has no option to keep them, so
the pre-scan (the standard library's tokenizer, which reports references in text as it meets them) records how
the page spelled each non-ASCII character it wrote as a reference (``&nbsp;``, ``&copy;``, ``&#8212;``,
``&#x2014;``), and the output writes that character so again, wherever it occurs in text or in an attribute:
untranslated text comes back as the page wrote it, and a translation that keeps a ``©`` gets ``&copy;``. A
character the page also writes literally somewhere is left literal (one spelling per character and page: the
first one seen). ASCII references (``&quot;``, ``&#124;``) come back as characters, as ``&``, ``<`` and ``>`` are
escaped by the serializer wherever needed: re-escaping ASCII could touch markup. References inside attribute
values are found in each start tag's raw text (the tokenizer resolves them unreported), terminated ones only.

Left alone: ``script``, ``style``, ``code``, ``pre``, ``textarea``, ``kbd``, ``samp``, ``var`` and any element
marked ``translate="no"`` (with its descendants, until one says ``translate="yes"``), as the HTML standard's
translate attribute defines, or ``class="notranslate"``, the convention of Google's and browsers' page
translators that CMS themes and code highlighters use (an explicit ``translate`` attribute wins).

Each text node is its own context: its sentences are translated (their whitespace kept), and inline markup stays
around exactly the words it wrapped, because a text node never crosses a tag. Translating a block's text across
its inline tags (with placeholders or alignment, as Bergamot does) is not done: see docs/documents.md.

A document is a full document when it starts with a doctype or an ``<html>``, ``<head>`` or ``<body>`` tag (after
whitespace, comments and an XML declaration), else a fragment (no ``<html>``/``<body>`` is added), parsed in the
context its first element needs (a ``<tr>`` in a table body), so that table rows and cells are kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html import unescape
from html.parser import HTMLParser
from xml.etree import ElementTree

import html5lib
from html5lib.serializer import HTMLSerializer

from nmtserve.server.documents.plan import DocumentError, Plan, plan_text, rebuild_each, sentences_of

SKIPPED = frozenset({"script", "style", "code", "pre", "textarea", "kbd", "samp", "var", "template"})
# attribute -> the elements whose attribute it is translatable on (None: any element)
TRANSLATED_ATTRIBUTES: dict[str, frozenset[str] | None] = {
    "title": None,
    "aria-label": None,
    "alt": frozenset({"img", "area", "input"}),
    "placeholder": frozenset({"input", "textarea"}),
    "label": frozenset({"option", "optgroup", "track"}),
    "abbr": frozenset({"th"}),
    "value": frozenset({"input"}),  # of type button, reset or submit only (translated_attributes)
    "content": frozenset({"meta"}),  # of name description or keywords only (translated_attributes)
}
BUTTON_INPUTS = frozenset({"button", "reset", "submit"})
DESCRIBING_META = frozenset({"description", "keywords"})
NEWLINE_EATERS = frozenset({"pre", "textarea", "listing"})
MAX_REFERENCE_CHARS = 40  # the longest named reference (&CounterClockwiseContourIntegral;) has 33
MAX_DEPTH = 512  # nesting beyond this is refused: a page that deep is an attack, and walks stay bounded

Slot = tuple[Callable[[], str], Callable[[str], None]]


def translated_attributes(element: ElementTree.Element) -> list[str]:
    """The names of ``element``'s attributes that are translated, in ``TRANSLATED_ATTRIBUTES``' order."""
    tag = _tag(element)
    names = []
    for name, tags in TRANSLATED_ATTRIBUTES.items():
        if (tags is not None and tag not in tags) or not (element.get(name) or "").strip():
            continue
        if name == "value" and (element.get("type") or "").strip().lower() not in BUTTON_INPUTS:
            continue
        if name == "content" and (element.get("name") or "").strip().lower() not in DESCRIBING_META:
            continue
        names.append(name)
    return names


def _translate_flag(element: ElementTree.Element, inherited: bool) -> bool:
    """True when ``element`` and what it contains are not translated: ``translate="no"``, or
    ``class="notranslate"`` where the element has no explicit ``translate``; else what its parent had."""
    translate = (element.get("translate") or "").strip().lower()
    if translate in ("yes", "no"):
        return translate == "no"
    return inherited or "notranslate" in (element.get("class") or "").split()


def _tag(element: ElementTree.Element) -> str:
    tag = element.tag
    return tag.rsplit("}", 1)[-1].lower() if isinstance(tag, str) else ""


def _is_full_document(parser_root: ElementTree.Element) -> bool:
    return any(child.tag == "<!DOCTYPE>" for child in parser_root)


# What may come before a page's first tag: whitespace, comments, and an XML declaration or other processing
# instruction (XHTML pages start <?xml ...?>; the HTML parser reads it as a comment)
_PROLOGUE = re.compile(r"(?:\s+|<!--.*?-->|<\?[^>]*>)*", re.DOTALL)
_FIRST_TAG = re.compile(r"<([a-zA-Z][^\s/>]*)")
DOCUMENT_TAGS = frozenset({"html", "head", "body"})  # their start tags are optional, so any of them may come first
# A fragment is parsed in the context its first element needs: in a <div>, the parser drops <tr>, <td> and the
# other table parts (and keeps only their text), as a browser does with such markup in a body.
FRAGMENT_CONTEXT = {
    "tr": "tbody",
    "td": "tr",
    "th": "tr",
    "thead": "table",
    "tbody": "table",
    "tfoot": "table",
    "caption": "table",
    "colgroup": "table",
    "col": "colgroup",
}


def parse(text: str) -> tuple[ElementTree.Element, bool]:
    """(root, full) for ``text``: a whole document when, after whitespace, comments and an XML declaration, it
    starts with a doctype or an ``html``, ``head`` or ``body`` tag; else a fragment, parsed in the context its
    first element needs (``FRAGMENT_CONTEXT``)."""
    builder = html5lib.getTreeBuilder("etree", fullTree=True)
    parser = html5lib.HTMLParser(tree=builder, namespaceHTMLElements=False)
    start = _PROLOGUE.match(text)
    rest = text[start.end() if start else 0 :]
    first = _FIRST_TAG.match(rest)
    tag = first.group(1).lower() if first else ""
    if rest[:9].lower() == "<!doctype" or tag in DOCUMENT_TAGS:
        return parser.parse(text), True
    return parser.parseFragment(text, container=FRAGMENT_CONTEXT.get(tag, "div")), False


def serialize(root: ElementTree.Element, spellings: dict[str, str] | None = None) -> str:
    """The tree as HTML; the characters in ``spellings`` written as the references given (see the module doc)."""
    serializer = HTMLSerializer(
        omit_optional_tags=False, quote_attr_values="always", inject_meta_charset=False, resolve_entities=True
    )
    # The parser drops one line feed right after <pre>, <textarea> and <listing>; one that is part of the text must
    # be written twice to survive a re-parse (the HTML standard's serializer used to do the same).
    doubled = [e for e in root.iter() if _tag(e) in NEWLINE_EATERS and (e.text or "").startswith("\n")]
    for element in doubled:
        element.text = "\n" + element.text
    try:
        out = serializer.render(html5lib.getTreeWalker("etree")(root))
        # only non-ASCII characters are in spellings, and tags and attribute names are ASCII: this touches text
        # and attribute values only, and comments and raw text cannot hold them (they would be literal there)
        return out.translate({ord(char): spelling for char, spelling in spellings.items()}) if spellings else out
    finally:
        for element in doubled:
            element.text = element.text[1:]


# Elements that never nest (void) or whose end tag may be left out (a new one closes the old): they do not deepen
# the tree however many of them are open in the markup.
FLAT = frozenset(
    [
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
        "p",
        "li",
        "dt",
        "dd",
        "tr",
        "td",
        "th",
        "option",
        "optgroup",
        "thead",
        "tbody",
        "tfoot",
        "colgroup",
        "rb",
        "rt",
        "rtc",
        "rp",
    ]
)


class _PreScan(HTMLParser):
    """A linear pre-scan (the standard library's tokenizer) of how deep start tags nest, stopping past the limit,
    and of how the page spells the characters it writes as references.

    html5lib's tree construction takes time quadratic in the nesting depth (20,000 nested ``div`` elements,
    100 kB, took 22 s), so depth is bounded before the page is parsed for real."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.open: list[str] = []
        self.deepest = 0
        self.spellings: dict[str, str] = {}  # character -> its first reference in the page's text

    def _reference(self, spelling: str) -> None:
        char = unescape(spelling)
        if len(char) == 1 and not char.isascii() and spelling != char:
            self.spellings.setdefault(char, spelling)

    def _references_in(self, raw: str) -> None:
        """The ``&...;`` references of a start tag's raw text (only terminated ones: in attribute values an
        unterminated one followed by a letter or ``=`` is not a reference)."""
        start = raw.find("&")
        while start >= 0:
            end = raw.find(";", start + 1, start + MAX_REFERENCE_CHARS)
            if end > start + 1:
                self._reference(raw[start : end + 1])
            start = raw.find("&", start + 1)

    def handle_entityref(self, name: str) -> None:
        self._reference(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self._reference(f"&#{name};")

    def handle_starttag(self, tag: str, attrs: list) -> None:
        raw = self.get_starttag_text() or ""
        if "&" in raw:  # the tokenizer resolves references in attribute values without reporting them
            self._references_in(raw)
        if tag not in FLAT:
            self.open.append(tag)
            self.deepest = max(self.deepest, len(self.open))
            if self.deepest > MAX_DEPTH:
                raise _TooDeep

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:  # close it and what it encloses, as a browser would
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag) :]


class _TooDeep(Exception):
    pass


def entity_spellings(text: str) -> dict[str, str]:
    """{character: reference} for the non-ASCII characters ``text`` writes as references in its text and never
    literally; raises DocumentError when the markup nests deeper than ``MAX_DEPTH``."""
    scan = _PreScan()
    try:
        scan.feed(text)
        scan.close()
    except _TooDeep:
        raise DocumentError(
            f"the HTML is nested more than {MAX_DEPTH} elements deep (the HTML nesting limit)"
        ) from None
    return {char: spelling for char, spelling in scan.spellings.items() if char not in text}


def _check_depth(root: ElementTree.Element) -> None:
    stack = [(root, 0)]
    while stack:
        element, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DocumentError(f"the HTML is nested more than {MAX_DEPTH} elements deep (the HTML nesting limit)")
        stack.extend((child, depth + 1) for child in element)


def _slots(root: ElementTree.Element) -> list[Slot]:
    """Getters and setters of every translatable string, in document order (iterative: depth is bounded)."""
    slots: list[Slot] = []

    def text_slot(element: ElementTree.Element) -> None:
        if element.text and element.text.strip():
            slots.append((lambda e=element: e.text, lambda value, e=element: setattr(e, "text", value)))

    def tail_slot(element: ElementTree.Element) -> None:
        if element.tail and element.tail.strip():
            slots.append((lambda e=element: e.tail, lambda value, e=element: setattr(e, "tail", value)))

    # (element, skipped by a translate="no" above, skipped by a code-like element above, visit or tail marker)
    stack: list[tuple[ElementTree.Element, bool, bool, bool]] = [(root, False, False, True)]
    while stack:
        element, no, code, visit = stack.pop()
        if not visit:  # the tail belongs to the parent's context
            if not (no or code):
                tail_slot(element)
            continue
        if not isinstance(element.tag, str) or element.tag.startswith("<!"):  # comment, doctype
            continue
        no = _translate_flag(element, no)
        code = code or _tag(element) in SKIPPED
        if not no:  # attributes first: they come before the text in the markup
            for name in translated_attributes(element):
                slots.append((lambda e=element, n=name: e.get(n), lambda value, e=element, n=name: e.set(n, value)))
        if not (no or code):
            text_slot(element)
        children = list(element)
        for child in reversed(children):  # popped in document order: child, then its tail, then the next child
            stack.append((child, no, code, False))
            stack.append((child, no, code, True))
    return slots


def plan_html(text: str, language: str) -> Plan:
    spellings = entity_spellings(text)
    root, _ = parse(text)
    _check_depth(root)
    slots = _slots(root)
    plans = [plan_text(get(), language) for get, _ in slots]

    def rebuild(translations: list[str]) -> str:
        for (_, put), piece in zip(slots, rebuild_each(plans, translations), strict=True):
            put(piece)
        return serialize(root, spellings)

    return Plan(sentences_of(plans), rebuild)

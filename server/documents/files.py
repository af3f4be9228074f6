"""Files as documents: which format a file name means, and its bytes as text, with errors that name the problem.

Shared by the HTTP file routes (``/translate_file``, ``/v1/translate_file``). Only UTF-8 is accepted (a byte
order mark is dropped): guessing a legacy encoding from the bytes would translate mojibake without a word of
warning, whereas a 400 that names the offset of the first invalid byte tells the sender what to convert. Bytes
that no text file contains (NUL, other C0 controls than tab, line and form feeds, carriage return) mean a
binary file sent by mistake, and are named as such before any parser sees them.
"""

from __future__ import annotations

import codecs
import re
from pathlib import PurePath

from nmtserve.server.documents.plan import DocumentError

FORMAT_OF_SUFFIX = {
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".srt": "srt",
}
MEDIA_TYPE = {
    "text": "text/plain",
    "html": "text/html",
    "markdown": "text/markdown",
    "srt": "application/x-subrip",
}
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0e-\x1f]")  # \x0c (form feed) occurs in old text files


def format_of(filename: str) -> str:
    """The document format of ``filename`` from its suffix, or DocumentError listing the supported ones."""
    suffix = PurePath(filename).suffix.lower()
    if suffix not in FORMAT_OF_SUFFIX:
        shown = repr(suffix) if suffix else "no suffix"
        supported = ", ".join(sorted(FORMAT_OF_SUFFIX))
        raise DocumentError(f"the file name has {shown}; supported file types: {supported}")
    return FORMAT_OF_SUFFIX[suffix]


def text_of(data: bytes) -> str:
    """The file's text: UTF-8 (a byte order mark dropped), or DocumentError naming the first offending byte."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DocumentError("the file is UTF-16 (it starts with a UTF-16 byte order mark); send it as UTF-8")
    binary = _BINARY.search(data)
    if binary is not None:
        raise DocumentError(
            f"the file looks binary, not text: byte 0x{data[binary.start()]:02X} at offset {binary.start()}; "
            "supported files are UTF-8 .txt, .html, .md and .srt"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentError(
            f"the file is not UTF-8: invalid byte 0x{data[error.start]:02X} at offset {error.start}; "
            "convert it to UTF-8 first"
        ) from None

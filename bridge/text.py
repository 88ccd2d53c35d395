"""Untrusted text (label values, names, payload strings) made safe to show on a terminal.

Anyone who can create an alert chooses its labels, and they reach the operator's terminal in
tables and messages. A newline there forges a row; ESC, a C1 CSI or an OSC sequence drives the
terminal (clears the screen, writes the clipboard); bidi overrides, zero-width and tag
characters hide or reorder what a person reads. Every such character is shown as an escape.
"""

from __future__ import annotations

import json
import unicodedata

# Cc: C0, DEL, C1. Cf: bidi overrides and isolates, zero-width characters, tags. Zl, Zp:
# U+2028 and U+2029, which some terminals and viewers break lines on. Cs, Co, Cn: surrogates,
# private use and unassigned code points, which have no business in a label. Zs (spaces) stay.
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in _UNSAFE


def printable(text: str) -> str:
    """`text` with every character a terminal would act on or hide written as an escape.

    \\n, \\r and \\t are named; others become \\xHH, \\uHHHH or \\UHHHHHHHH as in Python. A
    backslash is left as it is, so names already escaped (see decide._shown) read the same.
    """
    if text.isprintable():  # nearly always; false also for spaces other than " ", kept below
        return text
    return "".join(_escape(ch) if _unsafe(ch) else ch for ch in text)


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def json_line(doc: object) -> str:
    """`doc` as one line of JSON that is also safe on a terminal.

    json.dumps escapes C0 controls but, with ensure_ascii=False (kept so that names read as
    written), passes DEL, C1, bidi and the rest through raw. They are written here as \\uXXXX
    escapes instead: the same JSON value, which jq and every parser read back unchanged.
    """
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    if text.isprintable():
        return text
    return "".join(_json_escape(ch) if _unsafe(ch) else ch for ch in text)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # outside the BMP, JSON spells a character as its UTF-16 surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"

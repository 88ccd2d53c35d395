"""JSON encoders made once, for the paths that write hundreds of small documents a request.

json.dumps, and JSONEncoder.encode, build a new C encoder on every call; for a document of a
few keys (an alert's labels, an audit record's chain encoding) that is much of the cost.
encoder() builds it once, with the settings given, and writes what json.dumps writes with them.
"""

from __future__ import annotations

import json
from collections.abc import Callable


def encoder(*, separators: tuple[str, str] = (", ", ": "),
            ensure_ascii: bool = True) -> Callable[[object], str]:
    """A function writing `doc` as json.dumps(doc, separators=..., ensure_ascii=...) does
    (keys in the document's order; a value JSON has no form for raises TypeError)."""
    reference = json.JSONEncoder(separators=separators, ensure_ascii=ensure_ascii)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython builds its _json module
        return reference.encode
    item_separator, key_separator = separators
    encode = make(None, reference.default,
                  json.encoder.encode_basestring_ascii if ensure_ascii
                  else json.encoder.encode_basestring,
                  None, key_separator, item_separator, False, False, True)

    def write(doc: object) -> str:
        return "".join(encode(doc, 0))

    return write

"""The encoders made once write what json.dumps writes, with the same settings."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.jsontext import encoder

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(),
                     st.floats(allow_nan=True, allow_infinity=True))
_DOCS = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_DOCS)
def test_the_same_text_as_json_dumps(doc: object) -> None:
    assert encoder()(doc) == json.dumps(doc)
    compact = encoder(separators=(",", ":"), ensure_ascii=False)
    assert compact(doc) == json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def test_a_value_json_has_no_form_for_is_refused_as_json_dumps_refuses_it() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        encoder()({"when": object()})

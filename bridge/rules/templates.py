"""Device templates: Jinja2 in a sandbox that sees only an alert's labels and annotations."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from bridge.errors import BridgeError

#: Longest device name a template may produce; anything longer is a runaway template, not a device.
MAX_DEVICE_LENGTH = 1024


class TemplateRenderError(BridgeError):
    """A rule's device template failed to render for an alert."""

    def __init__(self, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        #: Name of the rule whose template failed, when known.
        self.rule = rule


class _Sandbox(SandboxedEnvironment):
    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # The stock sandbox returns an Undefined that only fails when used further, so
        # "{{ labels.__class__ }}" would silently render "". Reaching for internals is a mistake
        # or an attack either way: fail loudly.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


_ENV = _Sandbox(
    autoescape=False,
    undefined=jinja2.Undefined,
    # labels.get('x') on a missing label should render "" like labels.x does, not "None".
    finalize=lambda value: "" if value is None else value,
)


# Rule files repeat the same few templates ("{{ labels.device }}"), and a rule's template is
# compiled when the file is checked and again when the rule is built: compile each source once.
@functools.lru_cache(maxsize=1024)
def compile_template(source: str) -> jinja2.Template:
    """The sandboxed template, or ValueError "invalid template in 'device': ..."."""
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        where = f" (template line {exc.lineno})" if exc.lineno and exc.lineno > 1 else ""
        raise ValueError(f"invalid template in 'device': {exc.message or exc}{where}") from None
    except Exception as exc:  # absurd templates hit Python's limits (nesting, recursion)
        raise ValueError(f"invalid template in 'device': {exc}") from None


#: A template that only names one label or annotation: what almost every rule's device is.
_PLAIN = re.compile(r"\s*\{\{\s*(labels|annotations)\.([A-Za-z][A-Za-z0-9_]*)\s*\}\}\s*")
#: Names Jinja would look up as attributes of the dict before its items.
_DICT_ATTRIBUTES = frozenset(dir(dict))


@functools.lru_cache(maxsize=1024)
def plain_reference(source: str) -> tuple[str, str] | None:
    """("labels" or "annotations", name) when the template `source` is just
    ``{{ labels.name }}`` (or an annotation), which renders as that value or "" when there
    is none; None for any other template."""
    m = _PLAIN.fullmatch(source)
    if m is None or m[2] in _DICT_ATTRIBUTES:
        return None
    return m[1], m[2]


def render_device(
    template: jinja2.Template,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    rule: str | None = None,
    *,
    source: str | None = None,
) -> str:
    """The device ``template`` names for an alert, surrounding whitespace stripped.

    Raises TemplateRenderError (naming ``rule``) when the template fails or renders more than
    MAX_DEVICE_LENGTH characters. An empty result is returned as "" for the caller to judge.
    Given the template's ``source``, one that only names a label or an annotation is read
    straight from it, as Jinja would render it (a tenth of the cost: a storm renders one
    per alert).
    """
    plain = plain_reference(source) if source is not None else None
    value = (labels if plain[0] == "labels" else annotations).get(plain[1], "") \
        if plain is not None else None
    if isinstance(value, str):
        text = value
    else:
        try:
            # Copies: the sandbox lets templates call dict methods such as pop().
            text = template.render(labels=dict(labels), annotations=dict(annotations))
        except Exception as exc:  # anything raised here comes from the rule's own template
            raise TemplateRenderError(f"template error in 'device': {exc}", rule) from exc
    text = text.strip()
    if len(text) > MAX_DEVICE_LENGTH:
        raise TemplateRenderError(
            f"device template rendered {len(text)} characters (limit {MAX_DEVICE_LENGTH})", rule
        )
    return text

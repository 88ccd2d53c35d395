"""Parse webhook bodies of Alertmanager, Grafana unified alerting and legacy Grafana dashboard
alerting into Notification / Alert values. The formats are Alertmanager's webhook `Message`
(prometheus/alertmanager `notify/webhook`, `template.Data`), Grafana's webhook contact point
(`templates.ExtendedAlert` in grafana/alerting) and legacy Grafana's `WebhookNotifierBody`.
"""

from __future__ import annotations

import functools
import json
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from bridge.errors import PayloadError

SOURCES = ("alertmanager", "grafana", "grafana-legacy")

_FIRING = "firing"
_RESOLVED = "resolved"

# Go's time.Time{} marshals to "0001-01-01T00:00:00Z"; both products send it as endsAt of every
# firing alert, and Grafana as startsAt of alerts that never got one.
_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)

# RFC 3339 date-time. re.ASCII because \d would otherwise accept any Unicode digit.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)

# Go's regexp.QuoteMeta escapes exactly these characters (D.1).
_QUOTED_META = re.compile(r"\\([\\.+*?()|\[\]{}^$])")

_SURROGATE = re.compile("[\ud800-\udfff]")
#: How a lone surrogate gets into a decoded body: a JSON escape (\ud800 to \udfff). A body
#: without one decodes to text without one, and is not looked through (nearly every body).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

#: The types of a label map's values when all of them are strings.
_ONLY_STR = frozenset({str})

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)

_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_U64 = 0xFFFFFFFFFFFFFFFF

_SHORT_NAMES = {
    "alertmanager": "an Alertmanager payload",
    "grafana": "a Grafana payload",
    "grafana-legacy": "a legacy Grafana payload",
}
# What each value of parse(source=...) accepts; the Grafana endpoint gets both Grafana formats.
_ACCEPTED = {
    "alertmanager": ("alertmanager",),
    "grafana": ("grafana", "grafana-legacy"),
    "grafana-legacy": ("grafana-legacy",),
}
_EXPECTED_FOR = {
    "alertmanager": 'an Alertmanager payload (version "4" or "3")',
    "grafana": 'a Grafana payload (unified alerting version "1" or legacy dashboard alerting)',
    "grafana-legacy": "a legacy Grafana dashboard alerting payload",
}


@dataclass(frozen=True)
class Alert:
    """One alert of a notification, the same shape whichever product sent it."""

    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime | None
    ends_at: datetime | None
    fingerprint: str
    generator_url: str

    def __post_init__(self) -> None:
        # Copy even a mappingproxy: it may be a view of a dict its creator still mutates.
        object.__setattr__(self, "labels", types.MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "annotations", types.MappingProxyType(dict(self.annotations)))

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True)
class Notification:
    """One webhook delivery: a group of alerts and where it came from."""

    source: str
    receiver: str
    group_key: str
    status: str
    alerts: tuple[Alert, ...]
    truncated_alerts: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "alerts", tuple(self.alerts))


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's alert fingerprint: FNV-1a 64 over the sorted label set
    (`model.LabelSet.Fingerprint` in prometheus/common)."""
    h = _FNV64_OFFSET
    # Python orders str by code point, which is the same as Go's bytewise order of UTF-8.
    for name in sorted(labels):
        for part in (name, labels[name]):
            # surrogatepass: never fail on a lone surrogate handed in by a caller.
            for byte in part.encode("utf-8", "surrogatepass") + b"\xff":
                h = ((h ^ byte) * _FNV64_PRIME) & _U64
    return f"{h:016x}"


def detect(doc: object) -> str:
    """Tell which of SOURCES a decoded JSON body is, or raise PayloadError."""
    if not isinstance(doc, dict):
        raise PayloadError(
            "not an Alertmanager or Grafana webhook payload: "
            f"the top level is {_kind(doc)}, expected an object"
        )
    if "alerts" in doc:
        version = doc.get("version")
        # The version decides first: Grafana's Alertmanager-compatible integration sends
        # version "4" bodies, which are Alertmanager bodies whatever else they carry.
        if version == "1":
            return "grafana"
        if version in ("4", "3"):
            return "alertmanager"
        if any(key in doc for key in ("orgId", "state", "title")):
            if version is None:
                return "grafana"
            raise PayloadError(
                f'unsupported Grafana payload version {_show(version)} (expected "1")', "version"
            )
        if "version" not in doc:
            raise PayloadError(
                'payload has "alerts" but no "version" '
                '(expected "4" or "3" for Alertmanager, "1" for Grafana)',
                "version",
            )
        raise PayloadError(
            f'unsupported Alertmanager payload version {_show(version)} (expected "4" or "3")',
            "version",
        )
    if "ruleName" in doc or "evalMatches" in doc or ("state" in doc and "title" in doc):
        return "grafana-legacy"
    raise PayloadError(
        "not an Alertmanager or Grafana webhook payload: "
        'no "alerts", "ruleName" or "evalMatches" key'
    )


def parse(body: bytes, source: str | None = None) -> Notification:
    """Parse a webhook body.

    ``source`` is the format the endpoint expects: None detects it, "alertmanager" accepts only
    Alertmanager, "grafana" accepts Grafana unified and legacy Grafana, "grafana-legacy" only
    legacy Grafana. Every problem with the body raises PayloadError; a bad ``source`` or a
    ``body`` that is not bytes is the caller's bug and raises ValueError / TypeError.
    """
    if source is not None and source not in _ACCEPTED:
        raise ValueError(f"source must be None or one of {SOURCES}, got {source!r}")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"body must be bytes, got {type(body).__name__}")
    doc = _decode(bytes(body))
    found = detect(doc)
    if source is not None and found not in _ACCEPTED[source]:
        raise PayloadError(f"expected {_EXPECTED_FOR[source]}, got {_SHORT_NAMES[found]}")
    assert isinstance(doc, dict)  # detect() checked it
    if found == "grafana-legacy":
        return _parse_legacy(doc)
    return _parse_alert_list(doc, found)


class _NonStandardConstant(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonStandardConstant(name)


def _decode(body: bytes) -> object:
    if not body.strip():
        raise PayloadError("body is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PayloadError(f"body is not valid UTF-8: {e.reason} at byte {e.start}") from None
    # Go never sends a BOM, but files saved by Windows editors and pasted into curl do.
    text = text.removeprefix("\ufeff")
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise PayloadError(
            f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except _NonStandardConstant as e:
        raise PayloadError(f"body is not valid JSON: {e} is not allowed") from None
    except RecursionError:
        raise PayloadError("body is nested too deeply") from None
    except ValueError as e:
        # Python refuses to convert integers with more than sys.get_int_max_str_digits() digits.
        raise PayloadError(f"body cannot be decoded: {e}") from None
    return _cleaned(doc) if _SURROGATE_ESCAPE.search(text) else doc


def _parse_alert_list(doc: dict[str, Any], source: str) -> Notification:
    raw_alerts = doc.get("alerts")
    if not isinstance(raw_alerts, list):
        raise PayloadError(_wrong_type("alerts", "an array", raw_alerts), "alerts")
    return Notification(
        source=source,
        receiver=_unquote_meta(_opt_str(doc, "receiver", "receiver") or ""),
        group_key=_id_text(doc.get("groupKey"), "groupKey", "a string"),
        status=_status(doc, "status"),
        alerts=tuple(_parse_alert(raw, f"alerts[{i}]") for i, raw in enumerate(raw_alerts)),
        truncated_alerts=_truncated(doc.get("truncatedAlerts")),
    )


def _parse_alert(raw: object, where: str) -> Alert:
    if not isinstance(raw, dict):
        raise PayloadError(_wrong_type(where, "an object", raw), where)
    status = _status(raw, f"{where}.status")
    labels = _str_map(raw.get("labels"), f"{where}.labels")
    annotations = _str_map(raw.get("annotations"), f"{where}.annotations")
    starts_at = _timestamp(raw.get("startsAt"), f"{where}.startsAt")
    ends_at = _timestamp(raw.get("endsAt"), f"{where}.endsAt")
    generator_url = _opt_str(raw, "generatorURL", f"{where}.generatorURL") or ""
    # Grafana hashes hidden labels too, so a fingerprint it sent must be kept as is;
    # only senders that predate the field (Alertmanager < 0.19, version "3") get one computed.
    sent_fingerprint = _opt_str(raw, "fingerprint", f"{where}.fingerprint")
    return Alert(
        status=status,
        labels=labels,
        annotations=annotations,
        starts_at=starts_at,
        ends_at=ends_at,
        fingerprint=sent_fingerprint or fingerprint(labels),
        generator_url=generator_url,
    )


def _parse_legacy(doc: dict[str, Any]) -> Notification:
    """Map a legacy body (`WebhookNotifierBody`), which has no alert list, onto Alerts.

    * One Alert per entry of ``evalMatches``: each entry is one matched series, typically one
      device. Its labels are the rule ``tags``, then the entry's ``tags``, then
      ``alertname = ruleName`` (later ones win). No entries gives one Alert with the rule
      ``tags`` and ``alertname``.
    * ``state == "ok"`` is resolved; any other state (``alerting``, ``no_data``, ...) firing.
    * Annotations are ``title``, ``message`` and ``ruleUrl`` where present; ``ruleUrl`` is also
      the ``generator_url``, being the link back to the rule like Alertmanager's
      ``generatorURL``.
    * No timestamps; fingerprint computed from the labels; ``receiver`` is ``""``; ``group_key``
      is ``"grafana-legacy:<ruleId>"``, the same for every notification of one rule.
    """
    state = doc.get("state")
    if not isinstance(state, str):
        raise PayloadError(
            _wrong_type("state", "a string", state, missing="state" not in doc), "state"
        )
    status = _RESOLVED if state == "ok" else _FIRING

    rule_tags = _str_map(doc.get("tags"), "tags")
    rule_name = doc.get("ruleName")
    if rule_name is not None and not isinstance(rule_name, str):
        raise PayloadError(_wrong_type("ruleName", "a string", rule_name), "ruleName")
    name_label = {} if rule_name is None else {"alertname": rule_name}

    annotations = {}
    for key in ("title", "message", "ruleUrl"):
        text = _opt_str(doc, key, key)
        if text is not None:
            annotations[key] = text

    matches = doc.get("evalMatches")
    if matches is None:
        matches = []
    if not isinstance(matches, list):
        raise PayloadError(_wrong_type("evalMatches", "an array", matches), "evalMatches")
    label_sets = []
    for i, match in enumerate(matches):
        where = f"evalMatches[{i}]"
        if not isinstance(match, dict):
            raise PayloadError(_wrong_type(where, "an object", match), where)
        # value (number or null) and metric are deliberately not read: they describe the
        # measurement, not the alert's identity.
        series_tags = _str_map(match.get("tags"), f"{where}.tags")
        label_sets.append({**rule_tags, **series_tags, **name_label})
    if not label_sets:
        label_sets.append({**rule_tags, **name_label})

    alerts = tuple(
        Alert(
            status=status,
            labels=labels,
            annotations=annotations,
            starts_at=None,
            ends_at=None,
            fingerprint=fingerprint(labels),
            generator_url=annotations.get("ruleUrl", ""),
        )
        for labels in label_sets
    )
    return Notification(
        source="grafana-legacy",
        receiver="",
        group_key=f"grafana-legacy:{_id_text(doc.get('ruleId'), 'ruleId', 'an integer')}",
        status=status,
        alerts=alerts,
        truncated_alerts=0,
    )


def _unquote_meta(text: str) -> str:
    """Undo Go's regexp.QuoteMeta, which both products apply to the receiver name (D.1)."""
    return _QUOTED_META.sub(r"\1", text)


def _status(obj: dict[str, Any], where: str) -> str:
    value = obj.get("status")
    if value in (_FIRING, _RESOLVED):
        return value
    expected = '"firing" or "resolved"'
    if value is None:
        raise PayloadError(f"{where} is missing (expected {expected})", where)
    raise PayloadError(f"{where} must be {expected}, got {_show(value)}", where)


def _str_map(value: object, where: str) -> dict[str, str]:
    # null shows up in hand-made payloads and in legacy evalMatch tags; it means "none".
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PayloadError(_wrong_type(where, "an object", value), where)
    if not set(map(type, value.values())) <= _ONLY_STR:  # the common case, checked in C
        for key, item in value.items():
            if type(item) is not str:
                path = _key_path(where, key)
                raise PayloadError(_wrong_type(path, "a string", item), path)
    return value


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    """The string at ``key``; None when missing or null."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(_wrong_type(where, "a string", value), where)
    return value


def _timestamp(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(_wrong_type(where, "an RFC 3339 timestamp string", value), where)
    # Only texts as short as a time are remembered: a sender's junk is not kept.
    found = _known_time(value) if len(value) <= 40 else _time(value)
    if isinstance(found, str):
        raise PayloadError(f"{where} {found}: {_show(value)}", where)
    return found


def _time(value: str) -> datetime | None | str:
    """The time an RFC 3339 text names (None for Go's zero time), or why it names none."""
    m = _RFC3339.fullmatch(value)
    if m is None:
        return "is not an RFC 3339 timestamp"
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = m.groups()
    # Go sends nanoseconds; datetime holds microseconds. Truncate (as fromisoformat would):
    # rounding could carry into the next second, minute, ... or past year 9999.
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        if zulu:
            tz = UTC
        else:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            tz = timezone(-offset if sign == "-" else offset)
        local = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, tz
        )
        # A year-1 or year-9999 time with an offset can fall outside datetime's range in UTC.
        utc = local.astimezone(UTC)
    except (ValueError, OverflowError):
        return "is not a valid time"
    return None if utc == _ZERO_TIME else utc


#: The alerts of a storm share a few startsAt and endsAt texts: each is read once.
_known_time = functools.lru_cache(maxsize=1024)(_time)


def rfc3339(value: object) -> datetime | None:
    """An RFC 3339 time as Alertmanager, Grafana and the device API write it (UTC), or None
    when it is not one (or Go's zero time)."""
    try:
        return _timestamp(value, "time")
    except PayloadError:
        return None


def _id_text(value: object, where: str, expected: str) -> str:
    """An identifier sent as a string or, by older senders, as an integer (Alertmanager v3's
    uint64 groupKey; legacy Grafana's ruleId)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise PayloadError(_wrong_type(where, expected, value), where)


def _truncated(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise PayloadError(
        _wrong_type("truncatedAlerts", "a non-negative integer", value), "truncatedAlerts"
    )


def _cleaned(doc: Any) -> Any:
    """`doc` with every lone surrogate in its strings, keys included, replaced by U+FFFD.

    JSON "\\ud800" decodes to a lone surrogate, which no UTF-8 writer (logs, audit, HTTP)
    accepts later. Go's decoder replaces it with U+FFFD; so do we, once, for the whole body.
    """
    if isinstance(doc, str):
        return _SURROGATE.sub("\ufffd", doc)
    if isinstance(doc, list):
        return [_cleaned(item) for item in doc]
    if isinstance(doc, dict):
        return {_cleaned(key): _cleaned(value) for key, value in doc.items()}
    return doc


def _key_path(where: str, key: str) -> str:
    if _IDENTIFIER.fullmatch(key):
        return f"{where}.{key}"
    return f"{where}[{json.dumps(key)}]"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: object, limit: int = 60) -> str:
    """A short JSON rendering of a scalar for messages; containers are named, not dumped."""
    if isinstance(value, list | dict):
        return _kind(value)
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wrong_type(where: str, expected: str, value: object, missing: bool = False) -> str:
    if missing:
        return f"{where} is missing (expected {expected})"
    if isinstance(value, list | dict) or value is None:
        return f"{where} must be {expected}, got {_kind(value)}"
    return f"{where} must be {expected}, got {_kind(value)} ({_show(value)})"

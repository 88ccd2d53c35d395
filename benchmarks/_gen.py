"""Generated rules files and Alertmanager payloads for the benchmarks."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

from bridge.payloads import fingerprint

# Versions of the bridge with budgets and a storm breaker stop queueing operations after a few
# dozen in minutes (their safe defaults). The benchmarks measure the pipeline, not those guards,
# so they set them out of the way whenever the bridge knows them.
_GUARDRAILS_OFF = """\
budgets: []
breaker:
  max: 100000000
  per: 1m
"""


@functools.cache
def guardrails_off() -> str:
    """Top-level YAML that disables budgets and the storm breaker, or "" when the bridge's
    rules format has neither (it rejects unknown keys)."""
    from bridge.errors import RulesError
    from bridge.rules import parse_rules

    try:
        parse_rules(_GUARDRAILS_OFF + "rules: []\n", "guardrails-probe.yaml")
    except RulesError:
        return ""
    return _GUARDRAILS_OFF


#: How rule i of rules_yaml picks its alerts, by the `by` argument: an equality on alertname,
#: an equality on another label, a regex for t5 and its sub-teams t5-x (indexed by its leading
#: literal "t5"), the same regex case-insensitive, which no key indexes (the rules are found by
#: running their regexes joined into alternations), or the same regex with a named group, which
#: cannot join an alternation: every alert tries each such rule in turn.
KEYS = {
    "alertname": 'alertname = "A{i}"',
    "team": 'team = "t{i}"',
    "prefix": 'team =~ "t{i}(-.+)?"',
    "regex": 'team =~ "(?i)t{i}(-.+)?"',
    "unindexed": 'team =~ "(?P<team>t{i})(-.+)?"',
}


def rules_yaml(count: int, *, by: str = "alertname", operation: str = "sync",
               cooldown: str = "1h") -> str:
    """`count` rules; rule i matches its own alerts by the matcher KEYS[by] names, plus a
    severity regex, and names its device with a template over the alert's labels."""
    if by not in KEYS:
        raise ValueError(by)
    lines = [guardrails_off().rstrip(), "defaults:", "  cooldown: 30m", "rules:"]
    for i in range(count):
        first = KEYS[by].format(i=i)
        lines += [
            f"  - name: rule-{i}",
            "    match:",
            f"      - {first}",
            '      - severity =~ "critical|page"',
            '    device: "{{ labels.device }}"',
            f"    operation: {operation}",
            f"    cooldown: {cooldown}",
        ]
    return "\n".join(lines) + "\n"


def alert_labels(i: int, rules: int, *, by: str = "alertname", device: str = "") -> dict[str, str]:
    """Labels of alert i, matching exactly one of `rules` rules of rules_yaml (rule i % rules)."""
    k = i % rules
    labels = {
        "alertname": f"A{k}" if by == "alertname" else "DeviceProblem",
        "severity": "critical",
        "device": device or f"dev-{i}",
        "site": "hq",
    }
    if by != "alertname":
        labels["team"] = f"t{k}"
    return labels


def alertmanager_payload(labels_list: Sequence[dict[str, str]]) -> bytes:
    """An Alertmanager version 4 webhook body holding one firing alert per labels mapping."""
    alerts = [
        {
            "status": "firing",
            "labels": labels,
            "annotations": {"summary": f"{labels.get('alertname', '')} on {labels.get('device')}"},
            "startsAt": "2026-11-25T10:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=up%3D%3D0",
            "fingerprint": fingerprint(labels),
        }
        for labels in labels_list
    ]
    doc = {
        "receiver": "alert-bridge",
        "status": "firing",
        "alerts": alerts,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
    }
    return json.dumps(doc).encode()

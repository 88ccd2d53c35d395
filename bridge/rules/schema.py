"""The rules schema, declared once: every key of rules.yaml, its kind, default and meaning.

The loader reads files with it (key checks, messages, defaults), the values check themselves
against it when code builds them, and ``json_schema()`` turns it into the JSON Schema that
``alert-bridge schema`` prints for editors. A new field is a row here and, when rules carry
it, an attribute of Rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from bridge.rules.durations import parse_duration as seconds
from bridge.rules.kinds import (
    Choice,
    Clock,
    Count,
    Days,
    Duration,
    Flag,
    LabelName,
    Matchers,
    Name,
    Template,
    TimeZone,
)
from bridge.rules.sections import Field, ListOf, Nested, Section

OPERATIONS = ("sync", "reconf", "reboot", "device_factory", "factory")
DESTRUCTIVE = frozenset({"factory", "device_factory"})
#: How much harm each operation can do. Destructive operations need allow_destructive: true
#: and, unless the rule says require_approval: false, a person's approval.
RISK: Mapping[str, str] = MappingProxyType(
    {
        "sync": "routine",
        "reconf": "routine",
        "reboot": "disruptive",
        "device_factory": "destructive",
        "factory": "destructive",
    }
)
RISKS = ("routine", "disruptive", "destructive")
STATUSES = ("firing", "resolved", "any")
#: What happens to an operation asked for outside its rule's window.
OUTSIDE = ("hold", "skip")


def destructive_message(operation: str) -> str:
    return f"operation '{operation}' is destructive: set allow_destructive: true to allow it"


def _destructive_needs_opt_in(values: Mapping[str, Any]) -> tuple[str, str] | None:
    # "is False": an allow_destructive of the wrong type is reported already, once is enough.
    operation = values.get("operation")
    if operation in DESTRUCTIVE and values.get("allow_destructive") is False:
        return "operation", destructive_message(operation)
    return None


GIVE_UP = Section(
    "give_up",
    (
        Field("after", Count(), "Operations sent to one device before the bridge gives up."),
        Field("within", Duration(positive=True), "The sliding window those operations count in."),
    ),
    doc="Stop sending an operation to a device that got it `after` times within `within`.",
    path="give_up.",
    where=" in 'give_up'",
    shape="such as {after: 3, within: 1d}",
)

WINDOW = Section(
    "window",
    (
        Field("days", Days(), "Days the window opens: [mon, tue], mon-fri, fri-mon or daily.",
              default=frozenset(range(7))),
        Field("start", Clock(), 'Opening time, "HH:MM" in quotes.', required=True),
        Field("end", Clock(), 'Closing time, "HH:MM"; before start: the next day.', required=True),
        Field("timezone", TimeZone(), "IANA time zone of start and end, e.g. Europe/Madrid.",
              required=True),
        Field("outside", Choice(OUTSIDE), "Outside the window: hold until it opens, or skip.",
              default="hold"),
    ),
    doc="A weekly maintenance window: operations run only between start and end.",
    path="window.",
    where=" in 'window'",
    shape="with start, end and timezone",
)  # fmt: skip

BREAKER = Section(
    "breaker",
    (
        Field("max", Count(), "More operations than this asked for within `per` trip it."),
        Field("per", Duration(positive=True), "The sliding window operations count in."),
    ),
    doc="The storm breaker: stops all sending until `alert-bridge resume`.",
    path="breaker.",
    where=" in 'breaker'",
    shape="such as {max: 50, per: 5m}",
)

BUDGET = Section(
    "budget",
    (
        Field("name", Name(), "Unique name, shown in held_by_budget reasons.", required=True,
              unique=True),
        Field("max", Count(), "At most this many operations queued in any sliding `per`.",
              required=True),
        Field("per", Duration(positive=True), "The sliding window of the budget.", required=True),
        Field("operation", Choice(OPERATIONS, "operation"),
              "Count only this operation (default: every operation).", default=None),
        Field("group_by", LabelName(), "A label name: one budget per value of it, e.g. site.",
              default=None),
    ),
    owner="prefix",
)  # fmt: skip

STEP = Section(
    "step",
    (
        Field("operation", Choice(OPERATIONS, "operation"), "The operation of this step.",
              required=True),
        Field("verify", Duration(), "How long the alert may keep firing after this step "
              "before the next one; default: the rule's verify.", default=None),
        Field("cooldown", Duration(), "The cooldown this step claims; default: the rule's.",
              default=None),
        Field("allow_destructive", Flag(), "Must be true for factory and device_factory.",
              default=False),
        Field("require_approval", Flag(), "Wait for `alert-bridge approve`; default: true for "
              "destructive operations, false otherwise.", default=None),
    ),
    doc="The next step of a ladder: taken when the step before did not remediate the alert.",
    path="escalate.",
    where=" in 'escalate'",
    shape="such as {operation: reboot, verify: 15m}",
    checks=(_destructive_needs_opt_in,),
)  # fmt: skip

RULE = Section(
    "rule",
    (
        Field("name", Name(), "Unique name; it appears in the audit, answers and logs.",
              required=True, unique=True),
        Field("match", Matchers(), 'Alertmanager matchers, all of which must hold, e.g. '
              'alertname = "DeviceUnreachable".', required=True, attr="matchers"),
        Field("device", Template(), "Jinja2 template naming the device from labels and "
              "annotations, e.g. {{ labels.device }}.", required=True),
        Field("operation", Choice(OPERATIONS, "operation"), "The operation to run.",
              required=True),
        Field("cooldown", Duration(), "After this rule sends its operation to a device, the "
              "same operation is not sent to that device again for this long.",
              default=seconds("30m")),
        Field("status", Choice(STATUSES, "status"), "Which alerts the rule acts on.",
              default="firing"),
        Field("allow_destructive", Flag(), "Must be true for factory and device_factory.",
              default=False),
        Field("require_approval", Flag(), "Wait for `alert-bridge approve`; default: true for "
              "destructive operations, false otherwise.", default=None),
        Field("dry_run", Flag(), "Shadow mode: decide and audit, send nothing.", default=False),
        Field("min_age", Duration(), "Act only once the alert has fired this long.",
              default=0.0),
        Field("give_up", Nested(GIVE_UP), "Stop after `after` operations on one device within "
              "`within`.", default={"after": 3, "within": seconds("1d")}),
        Field("window", Nested(WINDOW, partial=False), "Maintenance window; empty: none.",
              default=None),
        Field("verify", Duration(), "After the operation succeeded, watch its alert for this "
              "long (from the operation's estimated completion): remediated if it resolves, "
              "not_remediated if not; 0: no verification.", default=0.0),
        Field("escalate", ListOf(STEP), "Steps taken in turn, for the same alert and device, "
              "while the step before did not remediate.", default=[]),
    ),
    owner="rule",
    checks=(_destructive_needs_opt_in,),
)  # fmt: skip

#: Settings for rules that do not set their own; approval_timeout is the rule set's.
DEFAULTS = Section(
    "defaults",
    (
        RULE["cooldown"],
        RULE["give_up"],
        RULE["min_age"],
        RULE["window"],
        RULE["verify"],
        Field("approval_timeout", Duration(positive=True), "How long an operation waits for "
              "approval before it expires.", default=seconds("1h")),
    ),
    doc="Settings for rules that do not set their own.",
    where=" in 'defaults'",
)  # fmt: skip

TOP = Section(
    "rules.yaml",
    (
        Field("defaults", Nested(DEFAULTS), "Settings for rules that do not set their own.",
              attr=None),
        Field("rules", ListOf(RULE), "The rules, in the order they act.", required=True),
        Field("budgets", ListOf(BUDGET), "Budgets every operation must fit; [] for none.",
              default=[{"name": "global", "max": 30, "per": seconds("10m")}]),
        Field("breaker", Nested(BREAKER), "The storm breaker.",
              default={"max": 50, "per": seconds("5m")}),
    ),
)  # fmt: skip

SECTIONS = (TOP, DEFAULTS, RULE, GIVE_UP, WINDOW, BUDGET, BREAKER, STEP)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07, what editors' YAML support reads best) of rules.yaml.

    It checks structure: keys, types, required keys, operation names and the forms of
    durations, times and matchers. Only the loader judges the rest (regexes, templates, time
    zones, unique names), so ``alert-bridge check`` stays the final word.
    """
    nullable = {DEFAULTS, GIVE_UP, WINDOW, BREAKER}  # "window:" left empty is allowed
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "alert-bridge rules",
        "description": "rules.yaml of alert-bridge: which alerts lead to which device "
        "operation. Printed by `alert-bridge schema`.",
        **TOP.json(nullable=False),
        "definitions": {
            section.name: section.json(nullable=section in nullable) for section in SECTIONS[1:]
        },
    }


def json_schema_text() -> str:
    """``json_schema()`` as ``alert-bridge schema`` prints it and docs/rules.schema.json holds."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"

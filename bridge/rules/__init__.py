"""Rules: which alerts lead to which device operation, loaded from rules.yaml.

The package in pipeline order: ``schema`` declares every key of the file once (``kinds`` holds
its building blocks); ``loader`` reads a file against it; ``values`` holds what it builds
(``Rule``, ``RuleSet`` and the guardrails, ``windows`` the maintenance windows); ``matchers``,
``templates`` and ``durations`` are the small languages inside a rule.
"""

from bridge.rules.durations import format_duration, parse_duration
from bridge.rules.kinds import DAYS
from bridge.rules.loader import load_rules, parse_rules
from bridge.rules.matchers import MATCH_OPS, Matcher, parse_matcher
from bridge.rules.schema import (
    BREAKER,
    BUDGET,
    DEFAULTS,
    DESTRUCTIVE,
    GIVE_UP,
    OPERATIONS,
    OUTSIDE,
    RISK,
    RISKS,
    RULE,
    STATUSES,
    STEP,
    TOP,
    WINDOW,
    json_schema,
    json_schema_text,
)
from bridge.rules.templates import MAX_DEVICE_LENGTH, TemplateRenderError
from bridge.rules.values import (
    DEFAULT_BREAKER,
    DEFAULT_BUDGETS,
    DEFAULT_GIVE_UP,
    Breaker,
    Budget,
    GiveUp,
    Rule,
    RuleSet,
    Step,
)
from bridge.rules.windows import Window

# The keys of each section, read from the schema (the README reference test lists them).
_TOP_KEYS = TOP.keys
_DEFAULTS_KEYS = DEFAULTS.keys
_RULE_KEYS = RULE.keys
_BUDGET_KEYS = BUDGET.keys
_BREAKER_KEYS = BREAKER.keys
_GIVE_UP_KEYS = GIVE_UP.keys
_WINDOW_KEYS = WINDOW.keys
_STEP_KEYS = STEP.keys

__all__ = [
    "DAYS", "DEFAULT_BREAKER", "DEFAULT_BUDGETS", "DEFAULT_GIVE_UP", "DESTRUCTIVE",
    "MATCH_OPS", "MAX_DEVICE_LENGTH", "OPERATIONS", "OUTSIDE", "RISK", "RISKS", "STATUSES",
    "Breaker", "Budget", "GiveUp", "Matcher", "Rule", "RuleSet", "Step", "TemplateRenderError",
    "Window",
    "format_duration", "json_schema", "json_schema_text", "load_rules", "parse_duration",
    "parse_matcher", "parse_rules",
]  # fmt: skip

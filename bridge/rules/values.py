"""The values rules.yaml is read into: immutable rules, their guardrails, and the rule set.

Each checks itself against the schema when built, so a value built in code (tests, other tools)
can never hold what the file could not.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field, replace
from typing import Any, ClassVar

import jinja2

from bridge.rules.index import RuleIndex, index_rules
from bridge.rules.kinds import NO_DEFAULT
from bridge.rules.matchers import Matcher
from bridge.rules.schema import (
    BREAKER,
    BUDGET,
    DEFAULTS,
    DESTRUCTIVE,
    GIVE_UP,
    RISK,
    RULE,
    STEP,
    TOP,
)
from bridge.rules.sections import Field, ListOf, Nested, Section
from bridge.rules.templates import compile_template, render_device
from bridge.rules.windows import Window


@dataclass(frozen=True)
class GiveUp:
    """Stop asking for an operation on a device once it was sent ``after`` times in ``within``."""

    after: int  # >= 1
    within: float  # seconds, > 0

    SECTION: ClassVar[Section] = GIVE_UP

    def __post_init__(self) -> None:
        GIVE_UP.check(self)


@dataclass(frozen=True)
class Budget:
    """At most ``max`` operations in any sliding ``per`` seconds (per value of ``group_by``)."""

    name: str  # unique among the budgets of a rule set
    max: int  # >= 1
    per: float  # seconds, > 0
    operation: str | None = None  # only this operation counts; None: every operation
    group_by: str | None = None  # a label name: one budget per value of it; None: one budget

    SECTION: ClassVar[Section] = BUDGET

    def __post_init__(self) -> None:
        BUDGET.check(self)


@dataclass(frozen=True)
class Breaker:
    """The storm breaker: trips when too many operations (``max``) are asked for in ``per``."""

    max: int  # >= 1
    per: float  # seconds, > 0

    SECTION: ClassVar[Section] = BREAKER

    def __post_init__(self) -> None:
        BREAKER.check(self)


@dataclass(frozen=True)
class Step:
    """A step of a rule's ladder after the first: what to try when the one before did not
    remediate. What it leaves out (None) is the rule's."""

    operation: str
    verify: float | None = None  # seconds
    cooldown: float | None = None  # seconds
    allow_destructive: bool = False
    require_approval: bool | None = None

    SECTION: ClassVar[Section] = STEP

    def __post_init__(self) -> None:
        STEP.check(self)


_CLASSES: Mapping[str, type] = {
    cls.SECTION.name: cls for cls in (GiveUp, Window, Budget, Breaker, Step)
}
_SECTIONS: Mapping[str, Section] = {
    s.name: s for s in (GIVE_UP, Window.SECTION, BUDGET, BREAKER, STEP)
}


def resolve(entry: Field, *layers: Mapping[str, Any]) -> Any:
    """The built value of ``entry`` from what was read, by key, in ``layers`` (a rule's keys,
    then the file's defaults): the first layer that has the key wins, else the field's default.

    A partial section (give_up, breaker) is merged instead: each key from the first layer that
    has it, else from the default (``give_up: {after: 2}`` keeps the default ``within``).
    """
    kind = entry.kind
    if isinstance(kind, Nested) and kind.partial:
        merged = dict(entry.default)
        for layer in reversed(layers):
            merged.update(layer.get(entry.key) or {})
        return build(kind.section, merged)
    value = next((layer[entry.key] for layer in layers if entry.key in layer), entry.default)
    if isinstance(kind, Nested) and value is not None:
        return build(kind.section, value)
    if isinstance(kind, ListOf):
        return tuple(build(kind.section, item) for item in value)
    return value


def build(section: Section, values: Mapping[str, Any]) -> Any:
    """The value (GiveUp, Window, Budget, Breaker) of a section from what was read, by key."""
    try:
        key = (section.name, tuple(values.items()))
        return _built(key)
    except TypeError:  # an unhashable value: build it afresh
        return _build(section, values)


# Rules share their give_up and window settings by the thousand (defaults, or one line
# generated for every rule): build each distinct value once. The values are frozen.
@functools.lru_cache(maxsize=1024)
def _built(key: tuple[str, tuple[tuple[str, Any], ...]]) -> Any:
    name, items = key
    return _build(_SECTIONS[name], dict(items))


def _build(section: Section, values: Mapping[str, Any]) -> Any:
    return _CLASSES[section.name](
        **{
            f.attribute: resolve(f, values)
            for f in section.fields
            if f.key in values or f.default is not NO_DEFAULT
        }
    )


DEFAULT_GIVE_UP: GiveUp = resolve(RULE["give_up"])
#: Used when the file has no ``budgets`` key at all: at most 30 operations in any 10 minutes.
DEFAULT_BUDGETS: tuple[Budget, ...] = resolve(TOP["budgets"])
DEFAULT_BREAKER: Breaker = resolve(TOP["breaker"])


@dataclass(frozen=True, slots=True)  # slots: rules are scanned by the thousand, keep them small
class Rule:
    """One rule: when an alert matches, run ``operation`` on the device its template names.

    Defaults are the schema's (bridge.rules.schema.RULE), so code and files agree.
    """

    name: str
    matchers: tuple[Matcher, ...]
    device: str  # template source
    operation: str
    cooldown: float  # seconds
    status: str = RULE["status"].default
    allow_destructive: bool = RULE["allow_destructive"].default
    line: int = 0  # line of the rule in the file; 0 when built in code
    # Guardrails (keyword-only, so positional construction keeps working):
    #: Shadow mode: decisions are audited as dry_run and nothing is sent.
    dry_run: bool = field(default=RULE["dry_run"].default, kw_only=True)
    #: Act only once the alert has been firing (since its startsAt) for this many seconds.
    min_age: float = field(default=RULE["min_age"].default, kw_only=True)
    give_up: GiveUp = field(default=DEFAULT_GIVE_UP, kw_only=True)
    window: Window | None = field(default=RULE["window"].default, kw_only=True)
    #: Whether a person must approve each operation. Left out (None) it becomes True for
    #: destructive operations and False otherwise; after construction it is always a bool.
    require_approval: bool = field(default=RULE["require_approval"].default, kw_only=True)
    #: Seconds to watch the alert after the operation succeeded; 0: not verified.
    verify: float = field(default=RULE["verify"].default, kw_only=True)
    #: The steps after this rule's own operation, taken while the one before did not remediate.
    escalate: tuple[Step, ...] = field(default=(), kw_only=True)
    _template: jinja2.Template | None = field(default=None, repr=False, compare=False, kw_only=True)
    _ladder: tuple[Rule, ...] = field(default=(), init=False, repr=False, compare=False)
    #: Set by the loader only, for values it has read against RULE already: checking them
    #: again was a third of the time ten thousand rules took to load.
    _checked: InitVar[bool] = field(default=False, kw_only=True)

    SECTION: ClassVar[Section] = RULE

    def __post_init__(self, _checked: bool) -> None:
        if not _checked:
            RULE.check(self)
        object.__setattr__(self, "require_approval",
                           _approval(self.operation, self.require_approval))
        if self._template is None:
            object.__setattr__(self, "_template", compile_template(self.device))
        rungs = [self, *(self._rung(step) for step in self.escalate)]
        for number, rung in enumerate(rungs[:-1], 1):
            if not rung.verify:
                raise ValueError(_ladder_needs_verify(number, len(rungs)))
        object.__setattr__(self, "_ladder", tuple(rungs))

    def _rung(self, step: Step) -> Rule:
        """This rule as the given step runs it: the step's operation and what it sets, the
        rule's matchers, device, window and other guards."""
        return replace(
            self, operation=step.operation, allow_destructive=step.allow_destructive,
            require_approval=_approval(step.operation, step.require_approval), escalate=(),
            _template=self._template,
            cooldown=self.cooldown if step.cooldown is None else step.cooldown,
            verify=self.verify if step.verify is None else step.verify,
        )

    @property
    def steps(self) -> int:
        """How many steps the ladder has: the rule's operation and each of `escalate`."""
        return len(self._ladder)

    def step(self, number: int) -> Rule:
        """The rule as step `number` (1: the rule itself, 2: the first of `escalate`) runs it.

        Raises IndexError for a step the ladder does not have."""
        if not 1 <= number <= len(self._ladder):
            raise IndexError(f"rule '{self.name}' has {len(self._ladder)} step(s), not {number}")
        return self._ladder[number - 1]

    @property
    def risk(self) -> str:
        """How much harm the operation can do: routine, disruptive or destructive (see RISK)."""
        return RISK[self.operation]

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when every matcher holds for these labels."""
        for m in self.matchers:  # not all(...): a generator per rule costs more than matching
            if not m.matches(labels):
                return False
        return True

    def failed_matcher(self, labels: Mapping[str, str]) -> Matcher | None:
        """The first matcher that does not hold, or None when the rule matches."""
        return next((m for m in self.matchers if not m.matches(labels)), None)

    def wants(self, alert_status: str) -> bool:
        """True when the rule acts on alerts with this status ("firing" or "resolved")."""
        return self.status == "any" or self.status == alert_status

    def render_device(self, labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
        """The device the template names for this alert, surrounding whitespace stripped.

        Raises TemplateRenderError when the template fails or renders more than
        MAX_DEVICE_LENGTH characters. An empty result is returned as "" for the caller to judge.
        """
        assert self._template is not None
        return render_device(self._template, labels, annotations, self.name, source=self.device)


def _approval(operation: str, required: bool | None) -> bool:
    """Whether an operation waits for a person: as said, else when it is destructive."""
    return operation in DESTRUCTIVE if required is None else required


def _ladder_needs_verify(number: int, steps: int) -> str:
    what = "'verify'" if number == 1 else f"'verify' of step {number} (escalate)"
    return (f"{what} is needed: step {number + 1} of {steps} follows only when step {number}"
            " did not remediate within it")


@dataclass(frozen=True)
class RuleSet:
    """All rules of one file, in file order."""

    rules: tuple[Rule, ...]
    default_cooldown: float
    path: str  # file name as given
    version: str  # first 12 hex chars of the sha256 of the file's bytes
    #: Top-level ``budgets``; without the key, DEFAULT_BUDGETS (30 operations per 10 minutes).
    budgets: tuple[Budget, ...] = DEFAULT_BUDGETS
    breaker: Breaker = DEFAULT_BREAKER
    #: Seconds an operation waits for a person's approval before it expires.
    approval_timeout: float = DEFAULTS["approval_timeout"].default
    # Which rules an alert's labels can match (bridge.rules.index): with rules generated per
    # site, team or device class, an alert is tried against a handful of rules, not all.
    _index: RuleIndex = field(init=False, repr=False, compare=False)
    _by_name: Mapping[str, Rule] = field(init=False, repr=False, compare=False,
                                         default_factory=dict)

    def __post_init__(self) -> None:
        TOP.check(self)  # rules, budgets (each valid, names unique) and breaker
        DEFAULTS.check(self)  # approval_timeout
        cooldown = DEFAULTS["cooldown"].check(self.default_cooldown, "cooldown")
        object.__setattr__(self, "default_cooldown", cooldown)
        object.__setattr__(self, "_index", index_rules([r.matchers for r in self.rules]))
        object.__setattr__(self, "_by_name", {rule.name: rule for rule in self.rules})

    def named(self, name: str) -> Rule | None:
        """The rule of that name, or None."""
        return self._by_name.get(name)

    def why_not_sent(self, rule_name: str) -> str | None:
        """Why these rules no longer send what the rule of that name queued (it is gone, or in
        shadow mode now), or None when they still do."""
        rule = self._by_name.get(rule_name)
        where = f"{self.path} (rules version {self.version})"
        if rule is None:
            return f"rule {rule_name!r} was removed from {where}"
        if rule.dry_run:
            return f"rule {rule_name!r} is in shadow mode (dry_run) in {where}"
        return None

    def matching(self, labels: Mapping[str, str]) -> list[Rule]:
        """The rules whose matchers all hold for these labels, in file order, found through
        the index (bridge.rules.index) rather than by trying every rule."""
        return [self.rules[i] for i in self._index.matching(labels)]

"""The one error family of the bridge: every failure a user can cause is a BridgeError."""

from __future__ import annotations


class BridgeError(Exception):
    """Something the user (an operator, a rules file, a webhook sender) got wrong."""

    #: HTTP status used when this error answers a request.
    status = 400

    def __init__(self, message: str | None = None, status: int | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self.args[0])


class PayloadError(BridgeError):
    """The webhook body is not a payload the bridge understands."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        #: JSON path of the offending value, e.g. ``alerts[2].labels``; "" for the whole body.
        self.where = where


class ParameterError(BridgeError):
    """A request parameter is malformed or outside the range it accepts."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter}: {problem}")
        #: The parameter's name, also answered as the error's "parameter".
        self.parameter = parameter


class ConfigError(BridgeError):
    """A setting (flag, environment variable, file) is invalid."""


class RulesError(BridgeError):
    """The rules file is invalid; ``problems`` lists every error found, in file order."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class RuleProblem:
    """One error in a rules file, located by file, line and rule name."""

    __slots__ = ("file", "line", "rule", "message")

    def __init__(self, file: str, line: int | None, rule: str | None, message: str) -> None:
        self.file, self.line, self.rule, self.message = file, line, rule, message

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        who = f"rule '{self.rule}': " if self.rule else ""
        return f"{where}: {who}{self.message}"

    def __repr__(self) -> str:
        return f"RuleProblem({str(self)!r})"

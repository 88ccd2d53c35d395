"""Weekly maintenance windows in local time, exact across daylight saving changes."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import ClassVar
from zoneinfo import ZoneInfo

from bridge.rules.kinds import time_zone
from bridge.rules.schema import WINDOW
from bridge.rules.sections import Section

_UTC = datetime.UTC
#: How far next_opening looks ahead: a week, plus a day for DST shifts.
_WINDOW_SEARCH_DAYS = 8


def _as_utc(when: datetime.datetime) -> datetime.datetime:
    if not isinstance(when, datetime.datetime) or when.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {when!r}")
    return when.astimezone(_UTC)


@dataclass(frozen=True)
class Window:
    """A weekly maintenance window in local time.

    On each day of ``days`` the window opens at ``start`` and closes at ``end`` (exclusive).
    When ``end`` is earlier than ``start`` it closes the next day (22:00-05:00 belongs to the
    day it starts on); when they are equal it lasts until ``start`` the next day (24 hours on
    ordinary days; 00:00-00:00 is the whole calendar day).

    Daylight saving time: a boundary is the first moment the clock in ``timezone`` shows that
    time on that date. A time that happens twice (clocks go back) means its first occurrence;
    a time that does not exist (clocks go forward) means the first moment after the gap. So a
    window is always one unbroken stretch of time and may be an hour longer or shorter on the
    night the clocks change.
    """

    days: frozenset[int]  # 0 = Monday ... 6 = Sunday
    start: datetime.time
    end: datetime.time
    timezone: str  # IANA name, e.g. Europe/Madrid
    outside: str = WINDOW["outside"].default  # "hold": queue until it opens; "skip": do not act
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    SECTION: ClassVar[Section] = WINDOW

    def __post_init__(self) -> None:
        WINDOW.check(self)
        object.__setattr__(self, "_zone", time_zone(self.timezone))

    def _boundary(self, day: datetime.date, clock: datetime.time) -> datetime.datetime:
        """The first moment, in UTC, at which the local clock shows ``day`` ``clock`` or later."""
        zone = self._zone
        naive = datetime.datetime.combine(day, clock)
        first = naive.replace(tzinfo=zone).astimezone(_UTC)  # fold=0: the earlier of two
        if first.astimezone(zone).replace(tzinfo=None) == naive:
            return first
        # The clock skips this time (a DST gap). With fold=0 and fold=1 zoneinfo applies the
        # offsets from before and after the gap; the change lies between. Transitions happen
        # on whole seconds, so bisect over seconds for the first one showing `naive` or later.
        other = naive.replace(tzinfo=zone, fold=1).astimezone(_UTC)
        low = math.floor(min(first, other).timestamp())
        high = math.ceil(max(first, other).timestamp())

        def reached(seconds: int) -> bool:
            shown = datetime.datetime.fromtimestamp(seconds, zone).replace(tzinfo=None)
            return shown >= naive

        if reached(low):
            return datetime.datetime.fromtimestamp(low, _UTC)
        if not reached(high):  # not a gap after all; cannot happen with real zone data
            return max(first, other)
        while high - low > 1:
            middle = (low + high) // 2
            if reached(middle):
                high = middle
            else:
                low = middle
        return datetime.datetime.fromtimestamp(high, _UTC)

    def _span(self, day: datetime.date) -> tuple[datetime.datetime, datetime.datetime]:
        """When the window of ``day`` opens and closes, in UTC (empty if opens >= closes)."""
        end_day = day if self.start < self.end else day + datetime.timedelta(days=1)
        return self._boundary(day, self.start), self._boundary(end_day, self.end)

    def contains(self, when: datetime.datetime) -> bool:
        """True when the window is open at ``when`` (timezone-aware, in any zone)."""
        moment = _as_utc(when)
        today = moment.astimezone(self._zone).date()
        # A window belongs to the day it opens: yesterday's may still be open. Two days back and
        # one ahead also cover zones whose clocks jumped across midnight.
        for offset in (-2, -1, 0, 1):
            day = today + datetime.timedelta(days=offset)
            if day.weekday() in self.days:
                opens, closes = self._span(day)
                if opens <= moment < closes:
                    return True
        return False

    def next_opening(self, when: datetime.datetime) -> datetime.datetime:
        """``when`` itself if the window is open then; else the moment it next opens, in UTC.

        Raises ValueError when ``when`` is naive, or (impossible with real zone data) when the
        window does not open within 8 days.
        """
        if self.contains(when):
            return when
        moment = _as_utc(when)
        today = moment.astimezone(self._zone).date()
        for offset in range(-1, _WINDOW_SEARCH_DAYS + 1):
            day = today + datetime.timedelta(days=offset)
            if day.weekday() in self.days:
                opens, closes = self._span(day)
                if moment < opens < closes:
                    return opens
        raise ValueError(
            f"window does not open within {_WINDOW_SEARCH_DAYS} days of {when.isoformat()}"
        )

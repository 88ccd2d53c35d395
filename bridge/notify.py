"""Telling people: the bridge's notices, delivered to the team's Alertmanager and chat webhooks.

What a person should know is a Notice (bridge.notices). Alertmanager gets every notice in
force again and again with `endsAt` ahead, and `endsAt` now once it ended; its routes,
silences and inhibitions decide who hears. Chat webhooks (Slack, Mattermost) get one message
when a notice starts and one when it ends. Delivery never blocks dispatch (it runs in the
closing loop's thread), failures are retried on the next round and logged, and no message
carries a secret: notices hold names, ids and the bridge's own words, and URLs are logged by
host only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from bridge.client import Secret
from bridge.notices import Delivered, Told

log = logging.getLogger(__name__)

#: Alertmanager resolves an alert by itself once its endsAt passes. Prometheus sends endsAt
#: four resend intervals ahead: one lost round, or a bridge restarting, resolves nothing.
ENDS_AHEAD_ROUNDS = 4
#: Alertmanager gets every notice in force again at least this often (Prometheus'
#: --rules.alert.resend-delay), and at once when one starts or ends.
RESEND = 60.0
#: How long a message that cannot be delivered is retried before it is given up (and logged).
GIVE_UP = 3600.0
#: Each delivery waits at most this long for an answer: a slow receiver delays only the next
#: round of the loop, never dispatch.
TIMEOUT = 5.0


# -- delivery ---------------------------------------------------------------------------------

def shown(url: str) -> str:
    """A URL as logs may show it: scheme and host, no credentials, path or query (a Slack
    webhook's path is its secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


@dataclass
class Sender:
    """POSTs JSON to URLs: a short timeout, no redirects, failures logged by host only."""

    session: requests.Session = field(default_factory=requests.Session)
    timeout: float = TIMEOUT

    def post(self, url: str, body: object, what: str) -> bool:
        try:
            r = self.session.post(url, json=body, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            log.warning("%s to %s failed: %s", what, shown(url), type(exc).__name__)
            return False
        if 200 <= r.status_code < 300:
            return True
        log.warning("%s to %s failed: HTTP %d", what, shown(url), r.status_code)
        return False


@dataclass
class Alertmanagers:
    """The team's Alertmanager: the members of one HA cluster (they share what one is told)."""

    urls: tuple[str, ...]
    sender: Sender = field(default_factory=Sender)

    def send(self, alerts: Sequence[Mapping[str, Any]]) -> bool:
        """POST the alerts to every member; True when at least one took them (it gossips them
        to the others), as Prometheus does."""
        if not alerts:
            return True
        sent = [self.sender.post(url + "/api/v2/alerts", list(alerts), "notification")
                for url in self.urls]
        return any(sent)

    def firing(self) -> set[str] | None:
        """The fingerprints of the alerts active now, from the first member that answers
        GET /api/v2/alerts (which lists no resolved alert); None when none answers."""
        for url in self.urls:
            try:
                r = self.sender.session.get(url + "/api/v2/alerts", timeout=self.sender.timeout,
                                            params={"silenced": "true", "inhibited": "true"})
                r.raise_for_status()
                return {a["fingerprint"] for a in r.json() if isinstance(a, dict)
                        and isinstance(a.get("fingerprint"), str)}
            except (requests.RequestException, ValueError, TypeError) as exc:
                log.warning("asking %s which alerts fire failed: %s", shown(url),
                            type(exc).__name__)
        return None


@dataclass
class Notifier:
    """One round of telling: Alertmanager first (all notices, when due), then each message
    the chat webhooks have not had yet."""

    alertmanagers: Alertmanagers | None
    webhooks: tuple[Secret, ...] = ()
    sender: Sender = field(default_factory=Sender)
    clock: Callable[[], float] = time.time
    interval: float = 10.0  # the loop's; endsAt is a few rounds ahead
    _last_sent: float = field(default=float("-inf"), init=False)
    _known: frozenset[str] = field(default=frozenset(), init=False)

    @property
    def configured(self) -> bool:
        return self.alertmanagers is not None or bool(self.webhooks)

    def deliver(self, told: Iterable[Told]) -> Delivered:
        """Tell what is due about these notices; the flags each one earned."""
        told = list(told)
        now = self.clock()
        delivered: Delivered = {}
        if self.alertmanagers is not None:
            self._to_alertmanager(told, now, delivered)
        else:  # nothing to resolve there
            for t in told:
                delivered.setdefault(t.notice.key, set()).add("told_resolved")
        for t in told:
            self._to_webhooks(t, now, delivered)
        return delivered

    def _to_alertmanager(self, told: list[Told], now: float, delivered: Delivered) -> None:
        assert self.alertmanagers is not None
        keys = frozenset(t.notice.key for t in told if t.ended is None)
        ending = [t for t in told if t.ended is not None and not t.told_resolved]
        if not ending and keys <= self._known and now - self._last_sent < RESEND:
            return
        ahead = now + ENDS_AHEAD_ROUNDS * max(self.interval, RESEND)
        alerts = [t.notice.to_alertmanager(ahead if t.ended is None else t.ended) for t in told
                  if t.ended is None or not t.told_resolved]
        if self.alertmanagers.send(alerts):
            self._last_sent, self._known = now, keys
            for t in ending:
                delivered.setdefault(t.notice.key, set()).add("told_resolved")
        else:
            self._known = frozenset()  # try again next round
            for t in ending:
                if now - t.ended > GIVE_UP:  # type: ignore[operator]  # ending: ended is set
                    log.error("could not tell Alertmanager that %s ended; it resolves it by"
                              " itself when its endsAt passes", t.notice.alertname)
                    delivered.setdefault(t.notice.key, set()).add("told_resolved")

    def _to_webhooks(self, t: Told, now: float, delivered: Delivered) -> None:
        flags = delivered.setdefault(t.notice.key, set())
        if not t.told_start and t.ended is not None:
            flags |= {"told_start", "told_end"}  # it came and went between two rounds
            return
        due: list[tuple[str, float | None]] = [("told_start", None)] if not t.told_start else []
        if t.ended is not None and not t.told_end:
            due.append(("told_end", t.ended))
        for flag, ended in due:
            body = t.notice.to_webhook(ended)
            sent = all([self.sender.post(url.reveal(), body, "chat message")
                        for url in self.webhooks])
            since = t.notice.since if ended is None else ended
            if sent or now - since > GIVE_UP:
                if not sent:
                    log.error("gave up telling the chat webhooks about %s: %s",
                              t.notice.alertname, body["text"])
                flags.add(flag)

"""Who may use the console and how a person stays logged in: roles, sessions, CSRF.

A person logs in with a token: one of BRIDGE_ADMIN_TOKENS may do everything, one of
BRIDGE_VIEWER_TOKENS may only look. The session is a cookie signed with BRIDGE_SESSION_SECRET,
which every worker and replica shares, so any of them accepts a session another one issued;
nothing about sessions is kept on the server. The cookie holds the person's name, a key derived
from their token (never the token), a CSRF token and two times. The role is looked up from that
key on every request, so a token removed from the settings ends its sessions at the restart.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer, URLSafeTimedSerializer

from bridge.auth import InboundAuth
from bridge.client import Secret
from bridge.text import printable
from bridge.vocab import Role

#: The session cookie, and the one that carries the login form's CSRF token.
COOKIE = "alert_bridge_console"
LOGIN_COOKIE = "alert_bridge_login"
#: However busy it is kept, a session ends this long after its login: a stolen cookie dies.
MAX_SESSION = 12 * 3600.0
#: How long a login form may be left open before it is sent.
LOGIN_FORM_TTL = 600.0
#: The longest name a person may give (it is written into audit records).
MAX_NAME = 64

DISABLED = (
    "The console is off: no token may log in. Set BRIDGE_ADMIN_TOKENS (people who may"
    " approve, reject, pause and resume) and/or BRIDGE_VIEWER_TOKENS (people who may only"
    " look), and BRIDGE_SESSION_SECRET, then restart the bridge."
)
NO_SECRET = (
    "The console is off: BRIDGE_SESSION_SECRET (or BRIDGE_SESSION_SECRET_FILE) is not set."
    " It signs the console's session cookies and must be the same on every worker and"
    " replica: set it to a random string of at least 32 characters (for example the output"
    " of `openssl rand -base64 32`), then restart the bridge."
)


@dataclass(frozen=True)
class Person:
    """Who sends this request, as their session says."""

    name: str
    role: Role
    key: str  # derived from their token: which token logged them in, without it
    csrf: str  # sent back with every form; a request without it is refused
    issued: float  # login time
    seen: float  # their last request

    @property
    def may_act(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def who(self) -> str:
        """How their actions are audited: name and role, as `--as` names a CLI user."""
        return f"{self.name} (console, {self.role})"


class ConsoleAuth:
    """The console's tokens and the key that signs its cookies; `problem` says why it is off."""

    def __init__(self, admin: InboundAuth, viewer: InboundAuth, secret: Secret | None,
                 idle: float) -> None:
        self.idle = idle
        self.problem: str | None = None
        if not (admin.bearer_tokens or viewer.bearer_tokens):
            self.problem = DISABLED
        elif not secret:
            self.problem = NO_SECRET
        self._secret = secret.reveal().encode() if secret else b""
        # Viewer first, so that a token in both lists is an admin's.
        self._keys = {self._key(t.reveal()): Role.VIEWER for t in viewer.bearer_tokens}
        self._keys.update({self._key(t.reveal()): Role.ADMIN for t in admin.bearer_tokens})
        self._sessions = URLSafeSerializer(self._secret, salt="alert-bridge console session")
        self._forms = URLSafeTimedSerializer(self._secret, salt="alert-bridge console login form")

    def __repr__(self) -> str:
        return f"ConsoleAuth(tokens={len(self._keys)}, enabled={self.problem is None})"

    @property
    def enabled(self) -> bool:
        return self.problem is None

    def _key(self, token: str) -> str:
        return hmac.new(self._secret, b"console token\0" + token.encode(),
                        hashlib.sha256).hexdigest()[:32]

    def log_in(self, name: str, token: str, now: float) -> tuple[Person, str] | None:
        """The person and their session cookie, or None when the token is not accepted."""
        key = self._key(token)
        role = None
        for known, known_role in self._keys.items():  # no early exit: timing shows no index
            if hmac.compare_digest(key, known):
                role = known_role
        if role is None:
            return None
        person = Person(name, role, key, secrets.token_urlsafe(32), now, now)
        return person, self.cookie(person, now)

    def cookie(self, person: Person, now: float) -> str:
        """The session cookie's value, with `now` as the person's last request."""
        return self._sessions.dumps({"n": person.name, "k": person.key, "c": person.csrf,
                                     "i": person.issued, "s": now})

    def person(self, cookie: str | None, now: float) -> Person | None:
        """Who the session cookie says, or None: no cookie, a forged or damaged one, one idle
        past BRIDGE_SESSION_IDLE or older than MAX_SESSION, or one whose token is gone."""
        if not cookie or not self.enabled:
            return None
        try:
            doc: Any = self._sessions.loads(cookie)
            name, key, csrf = str(doc["n"]), str(doc["k"]), str(doc["c"])
            issued, seen = float(doc["i"]), float(doc["s"])
        except (BadSignature, KeyError, TypeError, ValueError):
            return None
        role = self._keys.get(key)
        if role is None or now - seen > self.idle or now - issued > MAX_SESSION:
            return None
        return Person(name, role, key, csrf, issued, seen)

    def login_form(self) -> tuple[str, str]:
        """A CSRF token for a login form, and the cookie value that vouches for it."""
        nonce = secrets.token_urlsafe(32)
        return nonce, self._forms.dumps(nonce)

    def login_form_ok(self, sent: str, cookie: str | None) -> bool:
        """Whether a login form came back with the token its own page was given."""
        try:
            expected = self._forms.loads(cookie or "", max_age=int(LOGIN_FORM_TTL))
        except BadSignature:  # SignatureExpired too: a form left open too long
            return False
        return isinstance(expected, str) and hmac.compare_digest(sent.encode(), expected.encode())


def csrf_ok(person: Person, sent: str) -> bool:
    return bool(sent) and hmac.compare_digest(sent.encode(), person.csrf.encode())


def name_problem(name: str) -> str | None:
    """Why a name given at login cannot be recorded in the audit, if it cannot."""
    if not name:
        return "give your name: it is recorded with everything you do"
    if len(name) > MAX_NAME:
        return f"a name of at most {MAX_NAME} characters, please"
    if printable(name) != name:
        return "a name without control or invisible characters, please"
    return None

"""A real browser for the console's tests and screenshots: Debian's Chromium, driven by Playwright.

Playwright's own browser download is not used (and not possible everywhere): it drives the
system's /usr/bin/chromium (package chromium), which .ci/run installs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
#: --no-sandbox: tests run as root, where Chromium's sandbox refuses to start. The rest keep
#: the browser from reaching out anywhere (updates, sync, field trials) on its own.
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

ADMIN_TOKEN = "console-admin-7Qw-never-show-me"
VIEWER_TOKEN = "console-viewer-3Zk-never-show-me"
SESSION_SECRET = "console-session-secret-of-more-than-32-chars"
#: The environment of a bridge whose console is on.
CONSOLE_ENV = {"BRIDGE_ADMIN_TOKENS": ADMIN_TOKEN, "BRIDGE_VIEWER_TOKENS": VIEWER_TOKEN,
               "BRIDGE_SESSION_SECRET": SESSION_SECRET}


def have_chromium() -> bool:
    return os.access(CHROMIUM, os.X_OK)


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Page, url: str, name: str, token: str) -> None:
    """Open `url` (a console page), and log in on the page it sends a stranger to."""
    page.goto(url)
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def csrf_of(page: Page) -> str:
    """The CSRF token the page's forms carry (the log-out form is on every page)."""
    value = page.locator("input[name=csrf]").first.get_attribute("value")
    assert value
    return value


def visible_text(page: Page) -> str:
    return re.sub(r"\s+", " ", page.inner_text("main"))


def accept_dialogs(page: Page) -> None:
    """Say yes to the confirmations (approve, pause), as the person clicking would."""
    page.on("dialog", lambda dialog: dialog.accept())


def cookie(page: Page, name: str) -> dict[str, Any]:
    found = [c for c in page.context.cookies() if c["name"] == name]
    assert len(found) == 1, page.context.cookies()
    return dict(found[0])

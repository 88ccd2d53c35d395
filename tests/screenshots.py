"""Screenshots of the console for the README: `python -m tests.screenshots` (from the clone).

Starts the fake device API and `alert-bridge serve` (gunicorn) on loopback, sends a few alerts
so that the pages have something to show, then photographs the overview and a device's page
(laptop width) and an approval (phone width) with the system's Chromium, into docs/.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import requests

from bridge.fakeapi import start_fake_api_in_thread
from tests.browser import ADMIN_TOKEN, CONSOLE_ENV, accept_dialogs, chromium, log_in
from tests.helpers import ROOT, BridgeProcess, wait_for_outcomes

RULES = """\
defaults: {cooldown: 1h}
rules:
  - name: reboot-unreachable-routers
    match: ['alertname = "DeviceUnreachable"', 'device =~ ".+"']
    device: "{{ labels.device }}"
    operation: reboot
  - name: resync-config-drift
    match: ['alertname = "ConfigDrift"', 'device =~ ".+"']
    device: "{{ labels.device }}"
    operation: sync
    cooldown: 10m
  - name: factory-reset-compromised
    match: ['alertname = "DeviceCompromised"', 'device =~ ".+"']
    device: "{{ labels.device }}"
    operation: factory
    allow_destructive: true
"""
TOKEN = "fake-token"


def alert(alertname: str, device: str, **annotations: str) -> bytes:
    return json.dumps({
        "version": "4", "status": "firing", "receiver": "alert-bridge",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}',
        "alerts": [{"status": "firing",
                    "fingerprint": hashlib.sha256(device.encode()).hexdigest()[:16],
                    "labels": {"alertname": alertname, "device": device, "site": "madrid-hq",
                               "severity": "critical"},
                    "annotations": annotations, "startsAt": "2026-11-25T10:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z"}]}).encode()


def main() -> None:
    docs = ROOT / "docs"
    with tempfile.TemporaryDirectory() as tmp, \
            start_fake_api_in_thread(token=TOKEN) as fake:
        workdir = Path(tmp)
        rules = workdir / "rules.yaml"
        rules.write_text(RULES)
        bridge = BridgeProcess(workdir, rules, workdir / "state.db", {
            **CONSOLE_ENV, "BRIDGE_API_URL": fake.url, "BRIDGE_API_TOKEN": TOKEN,
            "BRIDGE_EXTERNAL_URL": "",
        }, workers=2).start()
        try:
            def send(body: bytes) -> None:
                requests.post(bridge.url + "/webhook", data=body, timeout=30,
                              headers={"Content-Type": "application/json"}).raise_for_status()

            send(alert("DeviceUnreachable", "office-router-01",
                       summary="office-router-01 does not answer ICMP or SNMP"))
            send(alert("ConfigDrift", "core-switch-01", summary="running config != intended"))
            send(alert("ConfigDrift", "office-router-02"))
            wait_for_outcomes(bridge.state, 3)
            send(alert("DeviceUnreachable", "office-router-01"))  # in its cooldown
            send(alert("DeviceCompromised", "branch-ap-17",
                       summary="Unknown SSH keys on branch-ap-17",
                       description="The IDS saw a login with a key that is not in the"
                                   " inventory; the device's config hash changed at 09:58."))
            shoot(bridge.url, docs)
        finally:
            bridge.stop()


def shoot(url: str, docs: Path) -> None:
    with chromium() as browser:
        laptop = browser.new_page(viewport={"width": 1280, "height": 860})
        accept_dialogs(laptop)
        log_in(laptop, url + "/", "alice", ADMIN_TOKEN)
        laptop.screenshot(path=str(docs / "console-overview.png"), full_page=True)
        laptop.goto(url + "/ui/devices/office-router-01")
        laptop.locator(".record summary").first.click()
        laptop.screenshot(path=str(docs / "console-device.png"), full_page=True)
        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                 is_mobile=True, has_touch=True)
        log_in(phone, url + "/ui/approvals", "alice", ADMIN_TOKEN)
        phone.locator(".approval details summary").first.click()
        phone.screenshot(path=str(docs / "console-approval.png"), full_page=True)
    for name in ("overview", "device", "approval"):
        print(f"wrote {docs / f'console-{name}.png'}")


if __name__ == "__main__":
    main()

"""alert-bridge: Alertmanager and Grafana webhooks in, device operations out."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import bridge.rules` (the CLI's check, the decision core) must not
    # pull in Flask and requests through this package's __init__.
    if name == "create_app":
        from bridge.app import create_app

        return create_app
    raise AttributeError(f"module 'bridge' has no attribute {name!r}")

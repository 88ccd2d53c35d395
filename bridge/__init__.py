"""alert-bridge: Alertmanager and Grafana webhooks in, device operations out."""

from bridge.app import create_app

__all__ = ["create_app"]

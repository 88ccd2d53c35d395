"""The bridge over HTTP: blueprints that serve from the app's BridgeContext.

`webhooks` takes alerts in, `operator` is the operator API, `lifecycle` answers probes,
reloads and scrapes; `answers` gives every answer its request id and every error one shape.
"""

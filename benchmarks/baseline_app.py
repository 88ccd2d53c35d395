"""The baseline for the webhook benchmarks: a bare Flask app that parses the JSON and answers 200.

Served by run.py with `python -m gunicorn` and the bridge's gunicorn options (2 workers,
gthread, 4 threads), so bridge / baseline isolates the bridge's own work per request.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.post("/webhook/alertmanager")
def webhook() -> Response:
    doc = request.get_json()
    return jsonify(alerts=len(doc.get("alerts", ())))


@app.get("/-/healthy")
def healthy() -> Response:
    return jsonify(status="healthy")

"""Several replicas on one PostgreSQL database: work queued by one is sent by any, at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from tests import postgres
from tests.conftest import Bridge, Fake
from tests.helpers import payload, wait_until

#: Longer than any test waits: a sender that only polled would never be seen to send.
NEVER = 3600.0


def listening(url: str) -> int:
    """How many sessions on the database LISTEN for queued work."""
    with postgres.connection(url) as conn:
        return int(conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query = 'LISTEN alert_bridge_queue'").fetchone()[0])


def test_work_queued_by_one_replica_wakes_an_idle_sender_of_another(
    make_bridge: Callable[..., Bridge], fake: Fake, postgres_url: str
) -> None:
    postgres.empty(postgres_url)
    intake = make_bridge(state=postgres_url, start_dispatcher=False)  # sends nothing itself
    sender = make_bridge(state=postgres_url, start_dispatcher=False)
    # Its senders poll once at start, then only when woken.
    sender.dispatcher.policy = replace(sender.dispatcher.policy, poll_interval=NEVER)
    sender.context.start()
    wait_until(lambda: listening(postgres_url) == 1, what="the sender listening")
    assert intake.post("/webhook", payload("alertmanager_resolved.json")).status_code == 200
    fake.arrived(1)  # within wait_until's deadline, far short of the poll interval
    assert [(r.event, r.outcome) for r in intake.outcomes(1)] == [("outcome", "succeeded")]

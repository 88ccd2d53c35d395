"""The audit log's hash chain: records written over real HTTP, tampered with in SQLite directly,
and `alert-bridge audit verify` naming the first record that breaks the chain."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.audit import CONTENT, HASHED, Delivery, chain, chain_hash, new_record
from bridge.cli import main
from bridge.decide import Decision
from bridge.payloads import parse
from bridge.rules import parse_rules
from bridge.store.base import _decision_entry, _entry
from bridge.vocab import Event, Verdict
from tests.conftest import RULES as RULES_TEXT
from tests.conftest import Bridge
from tests.helpers import BridgeProcess, Clock, payload, payload_json, wait_until

NOW = 1_700_000_000.0
GENESIS = "0" * 64
ALTERED = "was altered (its hash does not match its content)"


@contextmanager
def db(path: str) -> Iterator[sqlite3.Connection]:
    """The state file opened behind the bridge's back, as someone tampering with it would."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def row(path: str, record_id: int) -> dict[str, Any]:
    with db(path) as conn:
        return dict(conn.execute("SELECT * FROM audit WHERE id = ?", (record_id,)).fetchone())


def head(path: str) -> tuple[int, str]:
    with db(path) as conn:
        found = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    return found["id"], found["hash"]


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    """What a forger who knows the algorithm (it is no secret) writes: a self-consistent hash."""
    return {**record, "hash": chain_hash({c: record[c] for c in HASHED})}


def write(conn: sqlite3.Connection, record: dict[str, Any], verb: str = "INSERT") -> None:
    cols = list(record)
    conn.execute(f"{verb} INTO audit ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                 [record[c] for c in cols])


def verify(path: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["audit", "verify", "--state", path, *args])
    return result.exit_code, result.output


def ok_line(path: str, count: int, start: int = 1) -> str:
    head_id, head_hash = head(path)
    frm = f" from record {start}" if start != 1 else ""
    return f"OK: {count} records{frm}, chain intact, head {head_id} sha256:{head_hash}\n"


@pytest.fixture
def chained(make_bridge: Callable[..., Bridge]) -> str:
    """Seven records from three deliveries (dry run: nothing else writes meanwhile)."""
    bridge = make_bridge(dry_run=True, clock=lambda: NOW)
    for name in ("alertmanager_firing_multi.json", "alertmanager_firing_single.json",
                 "alertmanager_firing_multi.json"):
        assert bridge.post("/webhook/alertmanager", payload(name)).status_code == 200
    assert len(bridge.audit()) == 7
    return bridge.settings.state_path


def test_an_intact_chain_verifies_and_prints_its_head(chained: str) -> None:
    code, out = verify(chained)
    assert (code, out) == (0, ok_line(chained, 7))
    assert out.startswith("OK: 7 records, chain intact, head 7 sha256:")
    assert len(out.split("sha256:")[1].strip()) == 64


def test_the_encoding_is_the_documented_one(chained: str) -> None:
    # Written out independently of bridge.audit, so that a change to the encoding (which would
    # break every chain already written) cannot pass unnoticed.
    previous = GENESIS
    for record_id in range(1, 8):
        record = row(chained, record_id)
        assert record["prev_hash"] == previous
        # Columns added after records were first chained (step, elapsed) are hashed only
        # when they hold a value: every record written before them keeps its hash.
        doc = {k: v for k, v in record.items()
               if k != "hash" and not (k in ("step", "elapsed") and v is None)}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert record["hash"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
        previous = record["hash"]
    first = row(chained, 1)
    assert json.dumps({"ts": first["ts"]}) == '{"ts": 1700000000.0}'


def test_json_output_carries_the_chain_and_the_table_is_unchanged(chained: str) -> None:
    result = CliRunner().invoke(main, ["audit", "--state", chained, "--json", "--limit", "2"])
    docs = [json.loads(line) for line in result.output.splitlines()]
    assert [d["id"] for d in docs] == [6, 7]
    assert list(docs[1])[-2:] == ["prev_hash", "hash"]
    assert docs[1]["prev_hash"] == docs[0]["hash"] == row(chained, 6)["hash"]
    table = CliRunner().invoke(main, ["audit", "--state", chained, "--limit", "1"])
    assert table.output.splitlines()[0].split() == [
        "TIME", "RULE", "DEVICE", "OPERATION", "OUTCOME", "HTTP", "DETAIL"]


@pytest.mark.parametrize("column, value", [
    ("device", "StarScream2"),
    ("outcome", "execute"),
    ("reason", "dry run: nothing is sent "),
    ("ts", NOW + 0.001),
    ("status_code", 200),
    ("execution_id", ""),
    ("operation_id", 1),
    ("prev_hash", "f" * 64),
    ("hash", "f" * 64),
])
def test_a_changed_field_names_the_record_as_altered(chained: str, column: str,
                                                     value: object) -> None:
    with db(chained) as conn:
        conn.execute(f"UPDATE audit SET {column} = ? WHERE id = 4", (value,))
    assert verify(chained) == (1, f"Error: {chained}: audit record 4 {ALTERED}\n")


def test_the_first_problem_is_the_one_named(chained: str) -> None:
    with db(chained) as conn:
        conn.execute("UPDATE audit SET reason = 'x' WHERE id IN (3, 6)")
    assert verify(chained) == (1, f"Error: {chained}: audit record 3 {ALTERED}\n")


def test_a_removed_hash_is_named(chained: str) -> None:
    with db(chained) as conn:
        conn.execute("UPDATE audit SET hash = '' WHERE id = 2")
    assert verify(chained) == (1, f"Error: {chained}: audit record 2 has no hash (written"
                                  " without the chain, or its hash was removed)\n")


def test_a_deleted_record_is_named_as_missing(chained: str) -> None:
    with db(chained) as conn:
        conn.execute("DELETE FROM audit WHERE id = 4")
    assert verify(chained) == (
        1, f"Error: {chained}: audit record 5 does not follow record 3: record 4 is missing\n")


def test_several_deleted_records_are_named_as_a_range(chained: str) -> None:
    with db(chained) as conn:
        conn.execute("DELETE FROM audit WHERE id BETWEEN 2 AND 5")
    assert verify(chained) == (1, f"Error: {chained}: audit record 6 does not follow record 1:"
                                  " records 2 to 5 are missing\n")


def test_a_rewritten_record_with_a_recomputed_hash_breaks_the_next_link(chained: str) -> None:
    forged = rehash({**row(chained, 4), "device": "StarScream2", "outcome": "execute"})
    with db(chained) as conn:
        write(conn, forged, "REPLACE")
    assert verify(chained) == (
        1, f"Error: {chained}: audit record 5 is not chained to record 4 (its prev_hash is not"
           " record 4's hash): one of them was inserted, replaced or rewritten\n")


def test_a_forged_record_in_place_of_a_deleted_one_breaks_the_next_link(chained: str) -> None:
    # Delete record 4 and insert a forged one in its place, chained to record 3 as the bridge
    # would have: record 4 is self-consistent and well linked, record 5 is not.
    forged = rehash({**row(chained, 4), "reason": "approved by mallory",
                     "prev_hash": row(chained, 3)["hash"]})
    with db(chained) as conn:
        conn.execute("DELETE FROM audit WHERE id = 4")
        write(conn, forged)
    code, out = verify(chained)
    assert (code, out) == (1, f"Error: {chained}: audit record 5 is not chained to record 4"
                              " (its prev_hash is not record 4's hash): one of them was"
                              " inserted, replaced or rewritten\n")


def test_a_re_chained_record_is_named(chained: str) -> None:
    # Its own hash is right, but it no longer points at the record before it.
    with db(chained) as conn:
        write(conn, rehash({**row(chained, 4), "prev_hash": row(chained, 2)["hash"]}), "REPLACE")
    assert verify(chained) == (
        1, f"Error: {chained}: audit record 4 is not chained to record 3 (its prev_hash is not"
           " record 3's hash): one of them was inserted, replaced or rewritten\n")


def test_a_record_appended_behind_the_bridges_back_is_named(chained: str) -> None:
    with db(chained) as conn:
        write(conn, rehash({**row(chained, 7), "id": 8, "prev_hash": GENESIS}))
    assert verify(chained) == (
        1, f"Error: {chained}: audit record 8 is not chained to record 7 (its prev_hash is not"
           " record 7's hash): one of them was inserted, replaced or rewritten\n")


def test_record_1_must_start_from_the_genesis_value(chained: str) -> None:
    with db(chained) as conn:
        write(conn, rehash({**row(chained, 1), "prev_hash": "a" * 64}), "REPLACE")
    assert verify(chained) == (1, f"Error: {chained}: audit record 1 was re-chained (its"
                                  " prev_hash is not the genesis value)\n")


def test_records_deleted_from_the_end_are_named_while_sqlite_remembers_them(
    make_bridge: Callable[..., Bridge], chained: str
) -> None:
    with db(chained) as conn:
        conn.execute("DELETE FROM audit WHERE id >= 6")
    assert verify(chained) == (1, f"Error: {chained}: audit records 6 to 7 are missing from"
                                  " the end: the log ends at record 5, but record 7 was written\n")
    # The bridge never reuses their ids: what it writes next shows the gap.
    bridge = make_bridge(dry_run=True, clock=lambda: NOW)
    bridge.post("/webhook/alertmanager", payload("alertmanager_firing_single.json"))
    assert [r.id for r in bridge.audit()] == [1, 2, 3, 4, 5, 8]
    assert verify(chained) == (1, f"Error: {chained}: audit record 8 does not follow record 5:"
                                  " records 6 to 7 are missing\n")


def test_the_limit_a_deleted_end_and_a_reset_counter_go_unseen_but_the_head_changes(
    chained: str,
) -> None:
    before = ok_line(chained, 7)
    with db(chained) as conn:
        conn.execute("DELETE FROM audit WHERE id = 7")
        conn.execute("UPDATE sqlite_sequence SET seq = 6 WHERE name = 'audit'")
    code, out = verify(chained)
    assert (code, out) == (0, ok_line(chained, 6))
    assert out != before  # only a head noted elsewhere shows it: see the README


def test_a_chain_whose_oldest_records_were_pruned_verifies_from_its_first_record(
    chained: str,
) -> None:
    with db(chained) as conn:
        conn.execute("DELETE FROM audit WHERE id <= 3")
    assert verify(chained) == (0, ok_line(chained, 4, start=4))
    assert ok_line(chained, 4, start=4).startswith("OK: 4 records from record 4, chain intact,")


def test_an_empty_log(make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(dry_run=True)
    assert requests.get(bridge.url + "/-/ready", timeout=5).status_code == 200
    assert verify(bridge.settings.state_path) == (0, "OK: 0 records, the audit log is empty\n")


def test_a_log_emptied_behind_the_bridges_back(chained: str) -> None:
    with db(chained) as conn:
        conn.execute("DELETE FROM audit")
    assert verify(chained) == (1, f"Error: {chained}: audit records 1 to 7 are missing from the"
                                  " end: the audit log is empty, but record 7 was written\n")


def test_executed_operations_and_their_outcomes_chain(bridge: Bridge) -> None:
    # Written by two paths: the webhook's transaction, and the dispatcher's after each call.
    bridge.post("/webhook/alertmanager", payload("alertmanager_firing_multi.json"))
    bridge.post("/webhook/alertmanager", payload("alertmanager_resolved.json"))
    bridge.outcomes(4)
    path = bridge.settings.state_path
    assert verify(path) == (0, ok_line(path, 8))


def test_a_delivery_of_500_alerts_chains_in_one_transaction(
    make_bridge: Callable[..., Bridge],
) -> None:
    doc = payload_json("alertmanager_firing_multi.json")
    template = doc["alerts"][0]
    doc["alerts"] = [
        {**template, "fingerprint": f"{i:016x}",
         "labels": {**template["labels"], "system_under_test": f"dev-{i}"}}
        for i in range(500)
    ]
    bridge = make_bridge(dry_run=True)
    answer = bridge.post("/webhook/alertmanager", json.dumps(doc))
    assert answer.json()["summary"] == {"dry_run": 500}
    path = bridge.settings.state_path
    assert verify(path) == (0, ok_line(path, 500))


def test_values_are_hashed_as_they_are_stored(make_bridge: Callable[..., Bridge]) -> None:
    # An int clock (the REAL column gives back a float), and text JSON escapes differently.
    doc = payload_json("alertmanager_firing_single.json")
    doc["alerts"][0]["labels"]["alertname"] = 'Ünïcødé \u2028 line\nbreak \t "q" \\ 🚀 \x7f'
    bridge = make_bridge(dry_run=True, clock=lambda: 1_700_000_000)
    assert bridge.post("/webhook", json.dumps(doc)).status_code == 200
    assert bridge.audit()[0].alertname.startswith("Ünïcødé")
    path = bridge.settings.state_path
    assert verify(path) == (0, "OK: 1 record, chain intact, head 1 sha256:"
                               f"{head(path)[1]}\n")


def test_records_written_concurrently_by_several_gunicorn_workers_chain(
    gunicorn_bridge: Callable[..., BridgeProcess],
) -> None:
    bridge = gunicorn_bridge(workers=3)
    bodies = [payload("alertmanager_firing_multi.json"), payload("grafana_unified_firing.json"),
              payload("alertmanager_resolved.json"), payload("alertmanager_firing_single.json")]
    barrier = threading.Barrier(20)

    def one(i: int) -> int:
        with requests.Session() as s:
            s.get(bridge.url + "/-/healthy", timeout=10)  # connect first
            barrier.wait(10)
            return s.post(bridge.url + "/webhook", data=bodies[i % 4], timeout=60,
                          headers={"Content-Type": "application/json"}).status_code

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(one, range(20))) == [200] * 20
    # 5 deliveries each: 3 + 3 (2 hosts, 1 no_match) + 1 + 1 decisions, then 3 + 2 + 1
    # operations whose outcomes the senders append meanwhile.
    path = str(bridge.state)

    def outcomes() -> int:
        with db(path) as conn:
            return conn.execute("SELECT count(*) FROM audit WHERE event = 'outcome'").fetchone()[0]

    wait_until(lambda: outcomes() == 6, timeout=30, what="6 outcome records")
    assert verify(path) == (0, ok_line(path, 5 * 8 + 6))
    with db(path) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM audit ORDER BY id")]
    assert ids == list(range(1, 47))


OLD_AUDIT = """CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, event TEXT NOT NULL,
    request_id TEXT NOT NULL, source TEXT NOT NULL, receiver TEXT NOT NULL,
    group_key TEXT NOT NULL, fingerprint TEXT NOT NULL, alertname TEXT NOT NULL,
    alert_status TEXT NOT NULL, rule TEXT NOT NULL, device TEXT NOT NULL,
    operation TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL,
    status_code INTEGER, execution_id TEXT, error TEXT NOT NULL, operation_id INTEGER,
    attempt INTEGER)"""


def test_a_log_from_before_the_chain_is_chained_on_upgrade(
    tmp_path: Path, make_bridge: Callable[..., Bridge]
) -> None:
    state = tmp_path / "old.db"
    with db(str(state)) as conn:
        conn.execute(OLD_AUDIT)
        for i in range(3):
            conn.execute(
                "INSERT INTO audit (ts, event, request_id, source, receiver, group_key,"
                " fingerprint, alertname, alert_status, rule, device, operation, outcome,"
                " reason, error) VALUES (?, 'decision', 'r', 'alertmanager', 'x', 'g', 'f',"
                " 'HighLoad', 'firing', '', '', '', 'no_match', 'none', '')", (NOW + i,))
    bridge = make_bridge(dry_run=True, clock=lambda: NOW, state=state)
    bridge.post("/webhook/alertmanager", payload("alertmanager_firing_single.json"))
    assert verify(str(state)) == (0, ok_line(str(state), 4))
    assert row(str(state), 1)["prev_hash"] == GENESIS


def test_verify_has_help_with_an_example_and_takes_state_either_side(chained: str) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["audit", "verify", "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
    assert "alert-bridge audit verify" in result.output
    assert "verify" in runner.invoke(main, ["audit", "--help"]).output
    before = runner.invoke(main, ["audit", "--state", chained, "verify"])
    assert (before.exit_code, before.output) == (0, ok_line(chained, 7))


def test_listing_options_are_refused_with_verify(chained: str) -> None:
    result = CliRunner().invoke(main, ["audit", "--state", chained, "--json", "--limit", "3",
                                       "verify"])
    assert (result.exit_code, result.output) == (
        1, "Error: --limit, --json: only for listing records, not for `alert-bridge audit"
           " verify`\n")


def test_verify_of_a_missing_state_file_is_one_line(tmp_path: Path) -> None:
    assert verify(str(tmp_path / "none.db")) == (
        1, f"Error: {tmp_path / 'none.db'}: no such state file (has the bridge run here?"
           " see --state)\n")


def test_retention_prunes_old_records_and_the_chain_verifies_from_what_is_left(
    make_bridge: Callable[..., Bridge]
) -> None:
    clock = Clock(NOW)
    bridge = make_bridge(dry_run=True, clock=clock, start_dispatcher=False,
                         audit_retention=3600.0)
    state = bridge.settings.state_path
    bridge.post("/webhook/alertmanager", payload("alertmanager_firing_multi.json"))
    clock.now += 2 * 3600
    bridge.post("/webhook/alertmanager", payload("alertmanager_firing_multi.json"))
    housekeeper = bridge.context.housekeeper
    assert housekeeper.run_once() == 3
    assert [r.id for r in bridge.audit()] == [4, 5, 6]
    assert verify(state) == (0, ok_line(state, 3, start=4))
    clock.now += 10 * 3600
    assert housekeeper.run_once() == 2  # the newest record always stays: the chain goes on
    assert [r.id for r in bridge.audit()] == [6]


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_CONTENT_VALUES = {
    column: (st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.booleans())
             if column in ("status_code", "operation_id", "attempt", "step")
             else st.one_of(st.none(), st.floats(allow_nan=False), st.integers(0, 2**40))
             if column in ("ts", "elapsed")
             # NULL where text goes is not what the store writes, but the chain takes it.
             else st.one_of(_TEXT, st.sampled_from(list(Event)), st.none()))
    for column in CONTENT
}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries(_CONTENT_VALUES), max_size=5),
       st.integers(1, 2**40), st.text("0123456789abcdef", min_size=64, max_size=64))
def test_chaining_many_records_gives_what_record_by_record_gives(
    contents: list[dict[str, Any]], first_id: int, prev_hash: str,
) -> None:
    # The store appends with chain(); verify and the upgrade hash with new_record and
    # chain_hash, one record at a time. The two must give the same values and hashes.
    rows, last = chain(first_id, contents, prev_hash)
    # The same records given as their values as stored (what the store builds for decisions).
    as_stored = [tuple(new_record(0, content, "")[c] for c in CONTENT) for content in contents]
    assert chain(first_id, as_stored, prev_hash) == (rows, last)
    expected = []
    for record_id, content in enumerate(contents, first_id):
        values = new_record(record_id, content, prev_hash)
        prev_hash = chain_hash(values)
        expected.append((*values.values(), prev_hash))
    assert rows == expected
    assert last == prev_hash


def test_chaining_refuses_a_record_with_unknown_or_missing_columns() -> None:
    with pytest.raises(ValueError, match=r"missing \['ts'\], unknown \['colour'\]"):
        chain(1, [{**{c: "" for c in CONTENT if c != "ts"}, "colour": "red"}], GENESIS)
    with pytest.raises(ValueError, match=f"values: 3, not {len(CONTENT)}"):
        chain(1, [(1.0, "decision", "r")], GENESIS)


@pytest.mark.parametrize("verdict", [Verdict.EXECUTE, "held_min_age", Verdict.NO_MATCH])
@pytest.mark.parametrize(("op_id", "step"), [(None, 1), (7, 1), (8, 3)])
def test_a_decisions_values_as_stored_are_the_record_its_columns_make(
    verdict: str, op_id: int | None, step: int,
) -> None:
    # The store builds a storm's decision records as values (fast); they must be the record
    # the columns by name make, which chain() checks and types.
    alert = parse(payload("alertmanager_firing_single.json")).alerts[0]
    rule = parse_rules(RULES_TEXT, "rules.yaml").rules[0] if verdict != Verdict.NO_MATCH else None
    d = Decision(alert, rule, "router-1" if rule else "", rule.operation if rule else "",
                 verdict, "why", 1_700_003_600.0, None, step)
    delivery = Delivery("req-1", "alertmanager", "team-x", "{}:{}", "abc123")
    columns = {
        "request_id": "req-1", "source": "alertmanager", "receiver": "team-x",
        "group_key": "{}:{}", "fingerprint": alert.fingerprint, "alertname": alert.alertname,
        "alert_status": alert.status, "rule": rule.name if rule else "",
        "device": d.device, "operation": d.operation, "outcome": verdict, "reason": "why",
        "operation_id": op_id, "rules_version": "abc123", "step": step if step > 1 else None,
    }
    by_name = _entry(1_700_000_000, Event.DECISION, **columns)
    assert chain(5, [_decision_entry(1_700_000_000, delivery, d, op_id)], GENESIS) \
        == chain(5, [by_name], GENESIS)

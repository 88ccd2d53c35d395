"""The `alert-bridge` command: a thin click layer over the library.

Every failure a user can cause ends as `Error: ...` lines on stderr and exit status 1.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click
from click.core import ParameterSource

from bridge.audit import MAX_ID, AuditQuery, format_rows, format_table, iso, to_json_line
from bridge.config import (
    Settings,
    external_url_from_env,
    operation_url,
    parse_bind,
    state_password_file_from_env,
    state_path_from_env,
)
from bridge.errors import BridgeError, PayloadError, RulesError
from bridge.rules import format_duration, load_rules, parse_duration
from bridge.text import json_line, printable
from bridge.vocab import FINAL_STATES, Flag, OpState

F = TypeVar("F", bound=Callable[..., Any])

STATE_OPTION = click.option(
    "--state", "state_path", metavar="PATH", default=None,
    help="State (cooldowns, queue, audit): a SQLite file, or a postgresql:// URL."
         " [env BRIDGE_STATE; default ./bridge-state.db]",
)


def say(line: str = "", err: bool = False) -> None:
    """Print one line for a person. It may quote alerts or user input: escaped, it stays one
    line and cannot drive the terminal (see bridge.text)."""
    click.echo(printable(line), err=err)


def fail(*lines: str) -> NoReturn:
    for line in lines:
        say(f"Error: {line}", err=True)
    sys.exit(1)


def user_errors(func: F) -> F:
    """Turn BridgeErrors into `Error: ...` lines instead of tracebacks."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RulesError as exc:
            fail(*(str(p) for p in exc.problems))
        except BridgeError as exc:
            fail(exc.message)

    return wrapper  # type: ignore[return-value]


def setup_logging(kind: str = "text") -> None:
    from bridge import logs

    logs.setup(kind)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zequenze-alert-bridge", prog_name="alert-bridge")
def main() -> None:
    """Turn Alertmanager and Grafana alerts into device operations.

    \b
    Example:
        alert-bridge check rules.yaml && alert-bridge serve
    """


@main.command()
@click.option("--rules", "rules_path", metavar="PATH", default=None,
              help="Rules file. [env BRIDGE_RULES; default ./rules.yaml]")
@click.option("--bind", metavar="HOST:PORT", default=None,
              help="Listen address. [env BRIDGE_BIND; default 127.0.0.1:9095]")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="gunicorn worker processes. [default 2]")
@STATE_OPTION
@click.option("--insecure-no-auth", is_flag=True, default=None,
              help="Listen beyond loopback with no webhook authentication (not recommended)."
                   " [env BRIDGE_INSECURE_NO_AUTH]")
@user_errors
def serve(rules_path: str | None, bind: str | None, workers: int | None,
          state_path: str | None, insecure_no_auth: bool | None) -> None:
    """Run the bridge under gunicorn.

    The rules file is validated first; an invalid file stops the start with its errors.
    SIGTERM and SIGHUP sent to this process reach the whole server.

    \b
    Example:
        BRIDGE_API_TOKEN_FILE=/run/secrets/api-token alert-bridge serve --bind 0.0.0.0:9095
    """
    settings = Settings.from_env(
        rules_path=rules_path, bind=bind, workers=workers, state_path=state_path,
        insecure_no_auth=insecure_no_auth or None,
    )
    rules = load_rules(settings.rules_path)

    # Opening the store now fails the start early on an unusable state path. A restart is
    # how an operator applies a fixed token, so an old "API rejected the token" is cleared;
    # and the file just loaded is valid, so a reload refused before the restart is over.
    store = settings.open_store()
    store.set_flag(Flag.API_UNAUTHORIZED, None)
    store.set_flag(Flag.RELOAD_FAILED, None)
    depth = store.queue_depth(time.time())
    state = store.where  # never a password
    store.close()
    setup_logging(settings.log_format)
    log = logging.getLogger("bridge")
    log.info(
        "alert-bridge: %d rules from %s (version %s), state %s, device API %s",
        len(rules.rules), settings.rules_path, rules.version, state, settings.api_url,
    )
    if depth[OpState.QUEUED] or depth[OpState.SENDING]:
        log.info("resuming: %d operations queued, %d were being sent when the bridge stopped",
                 depth[OpState.QUEUED], depth[OpState.SENDING])
    if settings.auth.configured:
        log.info("webhook authentication: %s", ", ".join(settings.auth.methods))
    elif settings.insecure_no_auth:
        log.warning("INSECURE: webhooks on %s accept anyone (--insecure-no-auth)", settings.bind)
    else:
        log.info("webhook authentication: none (listening on loopback only)")
    if settings.dry_run:
        log.warning(
            "DRY RUN: %s. Decisions are audited as dry_run; no device API call is made.",
            settings.dry_run_reason,
        )
    from bridge.server import BridgeServer

    BridgeServer(settings, rules).run()


@main.command()
@click.argument("path", type=click.Path(dir_okay=False), default="rules.yaml")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
@user_errors
def check(path: str, strict: bool) -> None:
    """Validate a rules file and print every error in it, then every warning.

    Warnings: a rule that can never match; a device template using a label that no matcher of
    its rule guarantees; two rules that can send different operations to one device for the
    same alert. Exit status 1 on errors (or warnings with --strict), else 0.

    \b
    Example:
        alert-bridge check --strict rules.yaml
    """
    from bridge.lint import lint

    rules = load_rules(path)
    warnings = lint(rules)
    for warning in warnings:
        say(f"Warning: {warning}", err=True)
    if warnings and strict:
        sys.exit(1)
    ops = sorted({r.operation for r in rules.rules})
    warned = f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''}" if warnings else ""
    say(
        f"{path}: OK{warned}, {len(rules.rules)} rule{'s' if len(rules.rules) != 1 else ''}"
        f" (version {rules.version}; operations: {', '.join(ops) or 'none'};"
        f" default cooldown {format_duration(rules.default_cooldown)})"
    )


@main.command()
def schema() -> None:
    """Print the JSON Schema of rules.yaml, for editors that check YAML as you type.

    It is the same text as docs/rules.schema.json. Point the first line of a rules file at a
    copy, and VS Code (with the YAML extension) completes and checks rules while they are
    typed; `alert-bridge check` stays the final word.

    \b
    Example:
        alert-bridge schema > rules.schema.json
        # first line of rules.yaml: # yaml-language-server: $schema=rules.schema.json
    """
    from bridge.rules import json_schema_text

    click.echo(json_schema_text(), nl=False)


@main.group(invoke_without_command=True, subcommand_metavar="[verify]")
@STATE_OPTION
@click.option("--device", default=None, help="Only records for this device.")
@click.option("--rule", default=None, help="Only records of this rule.")
@click.option("--outcome", default=None,
              help="Only this verdict or outcome (execute, cooldown, succeeded, failed, ...).")
@click.option("--since", default=None, metavar="DURATION",
              help="Only records newer than this, e.g. 15m, 1h, 2d.")
@click.option("--limit", type=click.IntRange(0, MAX_ID), default=50, show_default=True,
              help="Show the newest N records (0: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for jq.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records until Ctrl-C.")
@click.pass_context
@user_errors
def audit(ctx: click.Context, state_path: str | None, device: str | None, rule: str | None,
          outcome: str | None, since: str | None, limit: int, as_json: bool,
          follow: bool) -> None:
    """Read the audit log: what the bridge decided and did, and why.

    `alert-bridge audit verify` checks the log's hash chain instead.

    \b
    Examples:
        alert-bridge audit --since 1h
        alert-bridge audit --device office-router-01 --json | jq .outcome
        alert-bridge audit --outcome failed --follow
        alert-bridge audit verify
    """
    if ctx.invoked_subcommand is not None:
        _to_subcommand(ctx, state_path, "records")
        return
    try:
        since_ts = time.time() - parse_duration(since) if since else None
    except ValueError as exc:
        fail(f"--since: {exc}")
    store = open_store(state_path)
    query = AuditQuery(device=device, rule=rule, outcome=outcome, since=since_ts,
                       limit=limit or None)
    records = store.audit(query)
    show_header = not as_json

    def emit(batch: list) -> None:
        nonlocal show_header
        if as_json:
            for record in batch:
                click.echo(to_json_line(record))
        elif batch or show_header:
            text = format_table(batch, header=show_header)
            if text:
                click.echo(text)
            show_header = False

    emit(records)
    if not follow:
        return
    last = records[-1].id if records else _last_id(store)
    try:
        while True:
            batch = store.audit(AuditQuery(device=device, rule=rule, outcome=outcome,
                                           after_id=last, limit=None))
            if batch:
                emit(batch)
                last = batch[-1].id
            else:
                time.sleep(0.5)  # SQLite tells no reader of new rows: look again soon
    except KeyboardInterrupt:
        pass


@audit.command()
@STATE_OPTION
@click.pass_context
@user_errors
def verify(ctx: click.Context, state_path: str | None) -> None:
    """Check the audit log's hash chain; name the first altered, inserted or missing record.

    Prints the number of records and the head (the newest record and its hash), exit 0, or
    one line naming the first record that breaks the chain, exit 1. Deleting the newest
    records can go unseen: note the head somewhere else and compare it later.

    \b
    Example:
        alert-bridge audit verify --state /var/lib/alert-bridge/bridge-state.db
    """
    store = open_store(state_path or ctx.obj)
    report = store.verify_audit()
    if not report.ok:
        fail(f"{store.where}: {report.problem}")
    say(report.summary())


def _to_subcommand(ctx: click.Context, state_path: str | None, listed: str) -> None:
    """A listing group invoked with a subcommand: refuse its listing options, pass --state."""
    listing = [p.opts[0] for p in ctx.command.params if p.name and p.name != "state_path"
               and ctx.get_parameter_source(p.name) not in (None, ParameterSource.DEFAULT)]
    if listing:
        fail(f"{', '.join(listing)}: only for listing {listed},"
             f" not for `alert-bridge {ctx.info_name} {ctx.invoked_subcommand}`")
    ctx.obj = state_path  # `GROUP --state PATH SUBCOMMAND` works too


def open_store(state_path: str | None) -> Any:
    """The state store of an existing bridge; never creates a state file by mistake."""
    from bridge.store import is_url
    from bridge.store import open_store as open_state

    location = state_path_from_env(given=state_path)
    if not is_url(location) and not os.path.exists(location):
        fail(f"{location}: no such state file (has the bridge run here? see --state)")
    return _closed_with_command(open_state(location, password_file=state_password_file_from_env()))


def _closed_with_command(store: Any) -> Any:
    """Close `store` when the running command ends, however it ends: a PostgreSQL store holds
    a pool whose threads must not outlive the command (an in-process caller, such as a test,
    would otherwise leave them behind)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(store.close)
    return store


def _last_id(store: Any) -> int:
    newest = store.audit(AuditQuery(limit=1))
    return newest[-1].id if newest else 0


@main.command()
@click.argument("payload_path", metavar="PAYLOAD.json", type=click.Path(dir_okay=False))
@click.option("--rules", "rules_path", metavar="PATH", default=None,
              help="Rules file. [env BRIDGE_RULES; default ./rules.yaml]")
@STATE_OPTION
@click.option("--live", is_flag=True, help="Judge as a live bridge even without an API token.")
@click.option("--json", "as_json", is_flag=True, help="The explanation as one JSON document.")
@user_errors
def explain(payload_path: str, rules_path: str | None, state_path: str | None, live: bool,
            as_json: bool) -> None:
    """Show what the bridge would decide for a saved webhook payload, and why.

    For each alert and each rule: why the rule does not match (which matcher fails), or the
    rendered device, the operation, the verdict and every guard's answer. Touches nothing:
    no API call, no state change.

    \b
    Example:
        alert-bridge explain tests/payloads/alertmanager_firing_multi.json --rules rules.yaml
    """
    import json
    from pathlib import Path

    from bridge import payloads
    from bridge.decide import EmptyState, explanation_json
    from bridge.decide import explain as explain_alerts

    settings = Settings.from_env(rules_path=rules_path, state_path=state_path, listening=False)
    rules = load_rules(settings.rules_path)
    try:
        body = Path(payload_path).read_bytes()
    except OSError as exc:
        fail(f"{payload_path}: {exc.strerror or exc}")
    try:
        notification = payloads.parse(body)
    except PayloadError as exc:
        fail(f"{payload_path}: {exc.message}" + (f" (at {exc.where})" if exc.where else ""))
    dry_run = settings.dry_run and not live
    now = time.time()

    def judge(state: Any) -> Any:
        return explain_alerts(notification.alerts, rules, state, now, dry_run=dry_run,
                              device_pattern=settings.device_regex)

    have_state = settings.state_is_url or os.path.exists(settings.state_path)
    store = _closed_with_command(settings.open_store()) if have_state else None
    results = store.read_state(judge) if store is not None else judge(EmptyState())
    rungs = store.in_progress(sorted({a.fingerprint for a in notification.alerts})) \
        if store is not None else []
    if as_json:
        click.echo(json.dumps({"source": notification.source, "dry_run": dry_run,
                               "state": have_state,
                               "alerts": explanation_json(results, rungs)}, indent=2))
        return
    say(f"{payload_path}: {notification.source} payload, {len(results)} alert(s);"
               f" rules {settings.rules_path} (version {rules.version})")
    if not have_state:
        say(f"No state file at {settings.state_path}: no cooldown, budget use or"
                   " breaker is assumed.")
    if dry_run:
        say(f"Dry run: {settings.dry_run_reason}. --live shows what a live bridge"
                   " would do.")
    for n, (alert, explained) in enumerate(results, 1):
        labels = ", ".join(f"{k}={v}" for k, v in alert.labels.items())
        say()
        say(f"Alert {n}: {alert.alertname or '-'} [{alert.fingerprint[:8]}]"
                   f" {alert.status}  {{{labels}}}")
        for r in explained:
            if not r.matched:
                say(f"  rule {r.rule.name}: no match: {r.why_not}")
                continue
            d = r.decision
            assert d is not None
            say(f"  rule {r.rule.name}: MATCH -> {d.operation} on {d.device or '-'}:"
                       f" {d.verdict} ({d.reason})")
            for g in r.guards:
                say(f"      {g.guard:<9}  {'ok' if g.passed else g.verdict:<16}"
                           f"  {g.reason}")
            for rung in rungs:
                if rung.of(r.rule, alert.fingerprint):
                    say(f"      ladder     {rung.describe(r.rule)}")


@main.command()
@STATE_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@user_errors
def pending(state_path: str | None, as_json: bool) -> None:
    """List operations waiting for a person's approval.

    With BRIDGE_EXTERNAL_URL set, each comes with the address of its page in the console.

    \b
    Example:
        alert-bridge pending && alert-bridge approve 42
    """
    import json

    external = external_url_from_env()
    ops = open_store(state_path).pending(time.time())
    if as_json:
        for op in ops:
            link = {"console_url": operation_url(external, op.id)} if external else {}
            click.echo(json.dumps({**op.to_json(), **link}))
        return
    if not ops:
        say("No operation is waiting for approval.")
        return
    header: tuple[str, ...] = ("ID", "QUEUED AT", "RULE", "DEVICE", "OPERATION", "ALERT")
    rows: list[tuple[str, ...]] = [
        (str(op.id), iso(op.created)[:-5].replace("T", " "), op.rule, op.device, op.operation,
         f"{op.alertname}[{op.fingerprint[:8]}]") for op in ops]
    if external:
        header += ("CONSOLE",)
        rows = [(*row, operation_url(external, op.id)) for row, op in zip(rows, ops, strict=True)]
    click.echo(format_rows(header, rows))


def _settle(state_path: str | None, operation_id: int, approve: bool, who: str | None) -> None:
    settings = Settings.from_env(state_path=state_path, listening=False)
    store = open_store(state_path)
    now = time.time()
    op = store.settle(operation_id, approve, _person(who), now, max_age=settings.max_age,
                      release_until=now + settings.failure_cooldown)
    if approve:
        say(f"Approved operation {op.id}: {op.operation} on {op.device} (rule {op.rule});"
                   " the bridge sends it now.")
    else:
        say(f"Rejected operation {op.id}: {op.operation} on {op.device} (rule {op.rule});"
                   " it will not be sent.")
    if settings.external_url:
        say(f"Console: {operation_url(settings.external_url, op.id)}")


def _person(who: str | None) -> str:
    """The name an operator's action is audited under."""
    return who or os.environ.get("USER") or "cli"


OPERATION_ID = click.IntRange(1, MAX_ID)
AS_OPTION = click.option("--as", "who", default=None, metavar="NAME",
                         help="Name recorded in the audit. [default $USER]")


@main.command()
@click.argument("operation_id", type=OPERATION_ID, metavar="ID")
@STATE_OPTION
@AS_OPTION
@user_errors
def approve(operation_id: int, state_path: str | None, who: str | None) -> None:
    """Approve an operation pending approval: the bridge sends it.

    \b
    Example:
        alert-bridge approve 42 --as alice
    """
    _settle(state_path, operation_id, True, who)


@main.command()
@click.argument("operation_id", type=OPERATION_ID, metavar="ID")
@STATE_OPTION
@AS_OPTION
@user_errors
def reject(operation_id: int, state_path: str | None, who: str | None) -> None:
    """Reject an operation pending approval: it is never sent.

    \b
    Example:
        alert-bridge reject 42 --as alice
    """
    _settle(state_path, operation_id, False, who)


@main.command()
@click.argument("operation_id", type=OPERATION_ID, metavar="ID")
@STATE_OPTION
@AS_OPTION
@user_errors
def cancel(operation_id: int, state_path: str | None, who: str | None) -> None:
    """End an operation that waits to be sent (queued, held or pending approval): it is never
    sent. For one queued by mistake, or held for a maintenance window you no longer want.

    One that is being sent, or has ended, cannot be cancelled. The cooldown it claimed stays,
    so the alert that asked for it does not queue it again at once.

    \b
    Example:
        alert-bridge audit --outcome held_for_window --json | jq .operation_id
        alert-bridge cancel 42 --as alice
    """
    (op,) = open_store(state_path).cancel(lambda _: f"cancelled by {_person(who)}", time.time(),
                                          operation_id=operation_id)
    say(f"Cancelled operation {op.id}: {op.operation} on {op.device} (rule {op.rule});"
        " it will not be sent.")


@main.command()
@click.argument("operation_id", type=OPERATION_ID, metavar="ID")
@STATE_OPTION
@AS_OPTION
@user_errors
def ack(operation_id: int, state_path: str | None, who: str | None) -> None:
    """Acknowledge what the bridge tells people about an operation: that it ended failed or
    unknown, or that it was the last step of a ladder and did not remediate its alert.

    The bridge stops sending AlertBridgeOperationFailed / AlertBridgeNotRemediated about it
    (Alertmanager resolves it). Audited (outcome acknowledged) under the name given by --as.

    \b
    Example:
        alert-bridge audit --outcome unknown && alert-bridge ack 42 --as alice
    """
    what = open_store(state_path).acknowledge(operation_id, _person(who), time.time())
    say(f"Acknowledged operation {operation_id}: {what}; people are no longer told about it.")


@main.command()
@STATE_OPTION
@click.option("--since", default="7d", show_default=True, metavar="DURATION",
              help="Count the records of this long ago until now.")
@click.option("--rule", default=None, help="Only this rule.")
@click.option("--device", "devices", is_flag=True,
              help="Also the devices that needed the most operations.")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON document.")
@user_errors
def report(state_path: str | None, since: str, rule: str | None, devices: bool,
           as_json: bool) -> None:
    """How well the rules work: per rule and operation, operations sent, succeeded and
    failed, verified and remediated (count and share), the median and 90th percentile time
    from the call to the alert's resolution, escalations taken and notifications raised.

    \b
    Examples:
        alert-bridge report --since 30d
        alert-bridge report --rule unreachable-router --device --json | jq .devices
    """
    from bridge.report import format_report, of_store

    try:
        span = parse_duration(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--since'") from None
    built = of_store(open_store(state_path), time.time(), span, rule)
    if as_json:
        click.echo(json_line(built.to_json(devices)))
    else:
        click.echo(format_report(built, devices))


@main.command()
@STATE_OPTION
@AS_OPTION
@user_errors
def pause(state_path: str | None, who: str | None) -> None:
    """Stop sending operations (the kill switch); webhooks are still received and audited.

    The pause is audited (outcome sending_paused) under the name given by --as.

    \b
    Example:
        alert-bridge pause --as alice && alert-bridge status
    """
    open_store(state_path).pause(time.time(), _person(who))
    say("Paused: no operation is sent until `alert-bridge resume`.")


@main.command()
@STATE_OPTION
@AS_OPTION
@user_errors
def resume(state_path: str | None, who: str | None) -> None:
    """Resume sending after `pause`, or after the storm breaker tripped.

    The resumption is audited (outcome sending_resumed) under the name given by --as.

    \b
    Example:
        alert-bridge status && alert-bridge resume --as alice
    """
    was = open_store(state_path).resume(time.time(), _person(who))
    say(f"Resumed (was: {', '.join(was) or 'running'}); queued operations are sent.")


@main.group(invoke_without_command=True, subcommand_metavar="[clear DEVICE]")
@STATE_OPTION
@click.option("--device", default=None, help="Only the cooldowns of this device.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
@user_errors
def cooldowns(ctx: click.Context, state_path: str | None, device: str | None,
              as_json: bool) -> None:
    """List the cooldowns in force: which operation no alert may send to which device, until
    when, and the rule and operation that claimed it.

    `alert-bridge cooldowns clear DEVICE` ends them, for a device fixed by hand that must be
    remediable again now.

    \b
    Examples:
        alert-bridge cooldowns --device office-router-01
        alert-bridge cooldowns clear office-router-01 --operation reboot --as alice
    """
    if ctx.invoked_subcommand is not None:
        _to_subcommand(ctx, state_path, "cooldowns")
        return
    now = time.time()
    found = open_store(state_path).cooldowns(now, device)
    if as_json:
        for c in found:
            click.echo(json_line(c.to_json()))
        return
    if not found:
        say(f"No cooldown in force{f' on {device}' if device else ''}.")
        return
    click.echo(format_rows(
        ("DEVICE", "OPERATION", "UNTIL", "LEFT", "RULE", "OPERATION ID"),
        [(c.device, c.operation, iso(c.until)[:-5].replace("T", " "),
          format_duration(max(1, round(c.until - now))), c.rule,
          str(c.operation_id) if c.operation_id is not None else "-") for c in found],
    ))


@cooldowns.command()
@click.argument("device")
@click.option("--operation", default=None, help="Only this operation's cooldown. [default: all]")
@STATE_OPTION
@AS_OPTION
@click.pass_context
@user_errors
def clear(ctx: click.Context, device: str, operation: str | None, state_path: str | None,
          who: str | None) -> None:
    """End the cooldowns in force on DEVICE, so that the next alert may act on it again.

    For a device fixed by hand that must be remediable again now. Each cooldown cleared is
    audited (outcome cooldown_cleared, with the name given by --as). Refused while an
    operation for it is still queued, sending or pending approval.

    \b
    Example:
        alert-bridge cooldowns clear office-router-01 --operation reboot --as alice
    """
    store = open_store(state_path or ctx.obj)
    for c in store.clear_cooldowns(device, operation, _person(who), time.time()):
        say(f"Cleared the cooldown of {c.operation} on {c.device} (rule {c.rule}); it ran"
            f" until {iso(c.until)}.")


@main.command()
@STATE_OPTION
@click.option("--url", default=None, metavar="URL",
              help="The running bridge to ask. [default http:// + BRIDGE_BIND]")
@click.option("--last", type=click.IntRange(0, MAX_ID), default=5, show_default=True,
              help="How many of the latest decisions and outcomes to show.")
@user_errors
def status(state_path: str | None, url: str | None, last: int) -> None:
    """One screen: the server and its rules, whether it is sending, API health, queue, latest.

    \b
    Example:
        alert-bridge status --state /var/lib/alert-bridge/bridge-state.db
    """
    import requests


    settings = Settings.from_env(state_path=state_path, listening=False)
    store = open_store(state_path)
    url = url or "http://" + settings.bind.replace("0.0.0.0", "127.0.0.1")
    try:
        ready = requests.get(url.rstrip("/") + "/-/ready", timeout=3).json()
    except (requests.RequestException, ValueError):
        say(f"Server:   not answering at {url}")
    else:
        if ready.get("status") == "ready":
            mode = "DRY RUN (nothing is sent)" if ready.get("dry_run") else "live"
            auth = ", ".join(ready.get("auth", [])) or "none"
            if ready.get("insecure_no_auth"):
                auth += " (INSECURE: --insecure-no-auth)"
            say(f"Server:   {url}: {mode}, {ready.get('rules')} rules (version"
                       f" {ready.get('rules_version')}), webhook auth: {auth}")
        else:
            say(f"Server:   {url}: NOT READY: {ready.get('error', '')}")
    alive = store.replicas_alive(time.time())
    say(f"State:    {store.where} ({store.engine}), {alive} replica{'' if alive == 1 else 's'}"
        " alive")
    paused, breaker = store.get_flag(Flag.PAUSED), store.get_flag(Flag.BREAKER_OPEN)
    if paused is not None:
        say(f"Sending:  PAUSED since {iso(paused)} (alert-bridge resume)")
    elif breaker is not None:
        say(f"Sending:  STORM BREAKER OPEN since {iso(breaker)} (alert-bridge resume)")
    else:
        say("Sending:  running")
    unauthorized = store.get_flag(Flag.API_UNAUTHORIZED)
    ends = store.outcome_counts(time.time() - 3600)
    health = ", ".join(f"{ends[o]} {o}" for o in FINAL_STATES if ends.get(o))
    if unauthorized is not None:
        say(f"API:      TOKEN REJECTED (HTTP 401) since {iso(unauthorized)}")
    else:
        say(f"API:      last hour: {health or 'no operation ended'}")
    ok_at, failed_at = store.get_flag(Flag.RELOAD_OK), store.get_flag(Flag.RELOAD_FAILED)
    if failed_at is not None and (ok_at is None or failed_at > ok_at):
        say(f"Rules:    the last reload, at {iso(failed_at)}, was REFUSED (invalid file;"
                   " see the log): the previous rules still run")
    elif ok_at is not None:
        say(f"Rules:    last reloaded at {iso(ok_at)}")
    depth = store.queue_depth(time.time())
    say(f"Queue:    {depth['queued']} queued, {depth['sending']} sending, "
               f"{depth['pending_approval']} pending approval")
    _remediation(store, settings)
    latest = store.audit(AuditQuery(limit=last)) if last else []
    if latest:
        say("Latest:")
        click.echo("\n".join("  " + line for line in format_table(latest).splitlines()))


def _remediation(store: Any, settings: Settings) -> None:
    """The last day's remediation rate, and the rules that may never see their alert resolve."""
    from bridge.report import of_store, remediation_line

    now = time.time()
    say(f"Verified: last day: {remediation_line(of_store(store, now, 86400.0))}")
    week = of_store(store, now, 7 * 86400.0)
    try:
        verifying = [r.name for r in load_rules(settings.rules_path).rules if r.verify]
    except RulesError:
        return  # the server's log and `check` say what is wrong with them
    for name in verifying:
        lines = [line for (rule, _), line in week.rules.items() if rule == name]
        if sum(x.not_remediated for x in lines) and not sum(
                x.remediated + x.resolved_before for x in lines):
            say(f"Warning:  rule {name} verifies, but none of its alerts was seen to resolve in"
                " 7 days: is send_resolved on (Alertmanager; in Grafana: 'Disable resolved"
                " message' off), or BRIDGE_ALERTMANAGER_URLS set?")


@main.command("copy-state")
@click.option("--from", "source", required=True, metavar="STATE",
              help="The state to copy: a SQLite file or a postgresql:// URL.")
@click.option("--to", "destination", required=True, metavar="STATE",
              help="Where to copy it: an empty (or new) SQLite file, or an empty PostgreSQL"
                   " database.")
@user_errors
def copy_state(source: str, destination: str) -> None:
    """Copy a whole state (cooldowns, queue, approvals, flags, the audit with its hash chain)
    to an empty store: from SQLite to PostgreSQL, or back. The source is only read.

    Stop the bridge first: what it writes after the copy began stays behind. A password comes
    from the URL, PGPASSWORD, ~/.pgpass or BRIDGE_STATE_PASSWORD_FILE, and is never printed.

    \b
    Example:
        alert-bridge copy-state --from /var/lib/alert-bridge/bridge-state.db \\
            --to postgresql://bridge@db.example:5432/bridge
    """
    from bridge.store import open_store as open_state

    src = open_store(source)
    dst = _closed_with_command(
        open_state(destination, password_file=state_password_file_from_env()))
    if src.where == dst.where:
        fail(f"--from and --to are the same state ({src.where})")
    try:
        copied = dst.import_rows(src.export_rows())
        report = dst.verify_audit()
    finally:
        src.close()
        dst.close()
    if not report.ok:
        fail(f"{dst.where}: copied, but {report.problem}")
    say(f"Copied {src.where} to {dst.where}: {copied['audit']} audit records,"
        f" {copied['operations']} operations, {copied['cooldowns']} cooldowns,"
        f" {copied['meta']} flags.")
    say(report.summary())


@main.command("fake-api")
@click.option("--bind", default="127.0.0.1:9096", show_default=True, metavar="HOST:PORT",
              help="Listen address.")
@click.option("--token", envvar="FAKE_API_TOKEN", default="fake-token", show_default=True,
              help="Bearer token the fake accepts. [env FAKE_API_TOKEN]")
@click.option("--devices", default=None, metavar="NAME,NAME,...",
              help="Inventory: device names it knows (others get 404). [default: a demo fleet]")
@click.option("--any-device", is_flag=True, help="Know every device name (never 404).")
@user_errors
def fake_api(bind: str, token: str, devices: str | None, any_device: bool) -> None:
    """Serve a fake device API that follows the contract, for demos and tests.

    It checks the token and the body like the real API, records every call
    (GET /_fake/calls) and can be told to fail, be slow or hold calls until
    POST /_fake/gate (POST /_fake/behaviour), or to accept another token from
    now on (PUT /_fake/token {"token": "..."}); POST /_fake/reset undoes it all.

    \b
    Example:
        alert-bridge fake-api --bind 127.0.0.1:9096 --devices office-router-01,core-switch-01
    """
    from bridge.fakeapi import DEFAULT_DEVICES, serve_fake_api

    host, port = parse_bind(bind)
    names = [d.strip() for d in devices.split(",") if d.strip()] if devices else DEFAULT_DEVICES
    setup_logging()
    serve_fake_api(host, port, token=token, devices=names, accept_any_device=any_device)

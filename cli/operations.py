"""One-shot operator commands: migrate, rebuild, status."""

from __future__ import annotations

from typing import Annotated

import typer

from iotp.command_line import command, load_settings, print_report

commands = typer.Typer()


@command(commands)
def migrate() -> None:
    """Create the database if needed and apply schema migrations (idempotent)."""
    from iotp.migrate import migrate as run_migrations
    from read_models.schema import READ_STORE_MIGRATIONS

    report = run_migrations(load_settings(), READ_STORE_MIGRATIONS)
    if report.database_created:
        typer.echo("created database")
    mode = "TimescaleDB" if report.timescaledb else "plain PostgreSQL"
    typer.echo(f"mode: {mode} ({report.mode_reason})")
    for name in report.applied:
        typer.echo(f"applied {name}")
    for name in report.read_store_applied:
        typer.echo(f"applied read store {name}")
    if not report.applied and not report.read_store_applied:
        typer.echo("schema up to date, nothing to apply")
    for policy in report.policies:
        typer.echo(f"policy: {policy}")
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)


@command(commands)
def rebuild() -> None:
    """Recompute every read model from the write store, then hand over to the aggregators."""
    from rich.progress import Progress

    from read_models.rebuild import rebuild as run_rebuild

    settings = load_settings()
    with Progress() as bar:
        task = bar.add_task("rebuilding read models", total=None)
        report = run_rebuild(
            settings, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    covered = (
        "from the first reading"
        if report.covered_from is None
        else f"from {report.covered_from:%Y-%m-%d} (raw telemetry's retention; the read"
        " models' days before it were kept)"
    )
    typer.echo(
        f"rebuilt {report.devices} devices, {report.metric_series} metric series,"
        f" {report.minute_buckets} minute, {report.hour_buckets} hour and"
        f" {report.day_buckets} day buckets {covered};"
        f" handed over {report.window_events} events published during the rebuild"
        f" ({report.window_applied} applied)"
    )


@command(commands)
def retention(
    once: Annotated[
        bool, typer.Option("--once", help="Run every retention job now, and print what went.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Retention of the read models (rollup tiers, the fleet's minutes, the audit log, applied
    event ids) and, on plain PostgreSQL, of raw telemetry. The aggregators run it every
    IOTP_RETENTION_INTERVAL_SECONDS; --once runs it now."""
    from read_models.retention import run_retention

    if not once:
        raise typer.BadParameter("the aggregators run retention; say --once to run it now")
    report = run_retention(load_settings(), everything=True)
    if report is None:
        typer.echo("another process is running the retention job; try again shortly", err=True)
        raise typer.Exit(1)
    if as_json:
        print_report({"rows": report.rows, "longest_batch_ms": report.longest_batch_ms}, True)
        return
    for what, count in report.rows.items():
        typer.echo(f"{what}: {count}")
    typer.echo(f"longest batch: {report.longest_batch_ms:.0f} ms")


@command(commands)
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show ingest counters, stream lengths and the outbox backlog."""
    from cli.status import collect_status, render_status

    report = collect_status(load_settings())
    if as_json:
        print_report(report, as_json=True)
    else:
        render_status(report)

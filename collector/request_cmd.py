"""``foundry-watch request ID [--live] [--json] [--window-days N]``: one request's full story.

Mounted by the CLI with ``app.command("request")(request)``. Exit codes: 0 found, 1 not found
(or the store cannot be read), 2 a malformed id (usage error, before anything is queried).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from collector.lookup import InvalidId, lookup, parse_id, render_text
from models.db import check_connection, make_engine
from models.migrations import ensure_current


def request(
    ctx: typer.Context,
    id: Annotated[
        str,
        typer.Argument(
            metavar="ID",
            help="Anthropic's request-id (req_…) or Azure's apim-request-id (a UUID).",
        ),
    ],
    live: Annotated[
        bool,
        typer.Option("--live", help="Also search Log Analytics now, even if the store has it."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    window_days: Annotated[
        int | None,
        typer.Option(
            "--window-days",
            min=1,
            max=400,
            help="How far back the live search looks (default: the retention window).",
        ),
    ] = None,
) -> None:
    """What happened to one request: status, timing, tokens, context and a support bundle."""
    settings = ctx.find_root().obj
    try:
        parse_id(id)
    except InvalidId as exc:
        raise typer.BadParameter(str(exc), param_hint="ID") from None
    engine = make_engine(settings.database_url)
    check_connection(engine)
    ensure_current(engine)
    report = lookup(settings, engine, id, live=live, window_days=window_days)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        typer.echo(render_text(report))
    if not report.found:
        raise typer.Exit(1)

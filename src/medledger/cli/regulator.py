"""``medledger regulator``: the regulator's view of the ledger (alerts and statistics).

Both commands need the key of an identity with role ``regulator``; others get
``ACCESS_DENIED``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medledger.cli.common import AsOpt, JsonOpt, NodeOpt, client_for, emit, out

app = typer.Typer(
    help="The regulator's view: alerts raised on chain and access statistics.",
    no_args_is_help=True,
)


def _when(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("alerts")
def alerts(
    kind: Annotated[
        str | None,
        typer.Option(
            help="Only this kind: break_glass, denied_access, access_spike, "
            "storage_audit_failure, validator_jailed, erasure.",
            show_default=False,
        ),
    ] = None,
    since_height: Annotated[
        int | None, typer.Option(help="Only alerts at this height or later.", show_default=False)
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="At most this many (default 100).", show_default=False)
    ] = None,
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Alerts raised on chain (break-glass, denials, spikes, storage, jailing, erasure),
    newest first."""
    with client_for(node, as_key) as c:
        doc = c.regulator_alerts(kind=kind, since_height=since_height, limit=limit)

    def human() -> None:
        t = Table("height", "time (UTC)", "kind", "actor", "record", "detail")
        for a in doc["alerts"]:
            t.add_row(
                str(a["height"]),
                _when(a["time_ms"]),
                a["kind"],
                a["actor"],
                a["record_id"] or "-",
                a["detail"],
            )
        out.print(t)
        if doc["truncated"]:
            out.print("more alerts exist: raise --limit or pass --since-height")

    emit(doc, as_json, human)


def _group_table(title: str, column: str, groups: dict[str, Any], *, writes: bool) -> Table:
    headers = [column, "reads", "allowed", "denied"] + (["writes"] if writes else [])
    t = Table(*headers, title=title)
    for name in sorted(groups):
        reads = groups[name].get("read", {})
        row = [
            name,
            str(reads.get("total", 0)),
            str(reads.get("allowed", 0)),
            str(reads.get("denied", 0)),
        ]
        if writes:
            row.append(str(groups[name].get("write", {}).get("total", 0)))
        t.add_row(*row)
    return t


@app.command("stats")
def stats(node: NodeOpt = "", as_key: AsOpt = Path("key"), as_json: JsonOpt = False) -> None:
    """Committed reads and writes, per institution, record type and purpose."""
    with client_for(node, as_key) as c:
        doc = c.regulator_stats()

    def human() -> None:
        reads = doc["totals"].get("read", {})
        writes = doc["totals"].get("write", {})
        out.print(
            f"at height {doc['height']}: {reads.get('total', 0)} reads "
            f"({reads.get('allowed', 0)} allowed, {reads.get('denied', 0)} denied), "
            f"{writes.get('total', 0)} writes"
        )
        out.print(
            _group_table("per institution", "institution", doc["by_institution"], writes=True)
        )
        out.print(_group_table("per record type", "type", doc["by_record_type"], writes=True))
        out.print(_group_table("per purpose (reads)", "purpose", doc["by_purpose"], writes=False))
        if doc["truncated"]:
            out.print("note: the node returned only part of the counters")

    emit(doc, as_json, human)

"""``medledger dicom``: who may call this institution's DICOM listener.

A modality or PACS calls the node's SCP under its calling AE title. An admin of the
node's institution maps that title to one of the institution's ``service``
identities; unknown titles, and titles whose identity is suspended, are refused at
association time. The list is kept by the node, off chain.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medledger.cli.common import AsOpt, JsonOpt, NodeOpt, client_for, emit, out

app = typer.Typer(
    help="DICOM: the calling AE titles the node's DICOM listener accepts (institution admins).",
    no_args_is_help=True,
)

AeTitleArg = Annotated[
    str, typer.Argument(help="Calling AE title: 1-16 printable ASCII characters, no backslash.")
]


@app.command("allow")
def allow(
    ae_title: AeTitleArg,
    identity: Annotated[
        str, typer.Option("--identity", help="The service identity the AE title acts as.")
    ],
    node: NodeOpt = "",
    as_key: AsOpt = Path("admin.key"),
    as_json: JsonOpt = False,
) -> None:
    """Accept associations from AE_TITLE, acting as a service identity of the institution."""
    with client_for(node, as_key) as c:
        doc = c.dicom_allow(ae_title, identity)
    verb = "allowed" if doc["created"] else "already allowed:"
    emit(doc, as_json, lambda: out.print(f"{verb} {ae_title} as {doc['identity']}"))


@app.command("deny")
def deny(
    ae_title: AeTitleArg,
    node: NodeOpt = "",
    as_key: AsOpt = Path("admin.key"),
    as_json: JsonOpt = False,
) -> None:
    """Refuse AE_TITLE from the next association on."""
    with client_for(node, as_key) as c:
        doc = c.dicom_deny(ae_title)
    emit(doc, as_json, lambda: out.print(f"denied {ae_title} (was {doc['identity']})"))


@app.command("ls")
def ls(
    node: NodeOpt = "",
    as_key: AsOpt = Path("admin.key"),
    as_json: JsonOpt = False,
) -> None:
    """The node's DICOM listener and the calling AE titles it accepts."""
    with client_for(node, as_key) as c:
        doc = c.dicom_allowed_aes()

    def human() -> None:
        listener = doc["dicom"]
        if listener is None:
            out.print(f"{doc['institution']}: no DICOM listener (dicom.port is not set)")
        else:
            out.print(
                f"{doc['institution']}: {listener['ae_title']} on "
                f"{listener['host']}:{listener['port']}"
            )
        t = Table("calling AE title", "identity", "added by", "added (UTC)")
        for e in doc["allowed"]:
            when = datetime.fromtimestamp(e["added_ms"] / 1000, UTC)
            t.add_row(e["ae_title"], e["identity"], e["added_by"], f"{when:%Y-%m-%d %H:%M:%S}")
        out.print(t)

    emit(doc, as_json, human)

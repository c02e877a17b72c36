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

from medledger.cli.common import AsOpt, JsonOpt, NodeOpt, client_for, emit, err, out

MAX_MERGE_ROUNDS = 1000  # 256 records a round

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
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Where AE_TITLE listens (hostname or IP): a C-MOVE destination."
        ),
    ] = "",
    port: Annotated[int, typer.Option("--port", help="Its DICOM port (1-65535), with --host.")] = 0,
    node: NodeOpt = "",
    as_key: AsOpt = Path("admin.key"),
    as_json: JsonOpt = False,
) -> None:
    """Accept associations from AE_TITLE, acting as a service identity of the institution.
    With --host and --port, C-MOVE may also send studies to AE_TITLE at that address."""
    with client_for(node, as_key) as c:
        doc = c.dicom_allow(ae_title, identity, host=host, port=port)
    verb = "allowed" if doc["created"] else "already allowed:"
    where = f" at {doc['host']}:{doc['port']}" if doc.get("host") else ""
    emit(doc, as_json, lambda: out.print(f"{verb} {ae_title} as {doc['identity']}{where}"))
    if doc.get("gateway_enrolled") is False:
        err.print(gateway_hint(doc["gateway_id"], node, as_key))


def gateway_hint(gateway_id: str, node: str, as_key: Path) -> str:
    return (
        f"note: this node's DICOM gateway {gateway_id} is not an enrolled service yet; "
        "studies it receives by C-STORE stay in its spool until it is:\n"
        f"  medledger identity enroll --role service --id {gateway_id} "
        f"--node {node or 'URL'} --as {as_key}"
    )


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
                f"{listener['host']}:{listener['port']}, gateway {doc['gateway_id']}"
                + ("" if doc["gateway_enrolled"] else " (not enrolled)")
            )
        t = Table("calling AE title", "identity", "move destination", "added by", "added (UTC)")
        for e in doc["allowed"]:
            when = datetime.fromtimestamp(e["added_ms"] / 1000, UTC)
            dest = f"{e['host']}:{e['port']}" if e.get("host") else "-"
            t.add_row(
                e["ae_title"], e["identity"], dest, e["added_by"], f"{when:%Y-%m-%d %H:%M:%S}"
            )
        out.print(t)

    emit(doc, as_json, human)


@app.command("reindex")
def reindex(
    node: NodeOpt = "",
    as_key: AsOpt = Path("admin.key"),
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the node's study index (C-FIND, QIDO-RS, FHIR ImagingStudy) from the
    ledger: the institution's imaging studies it lacks are read, one audited read each
    (purpose audit), and indexed. For a lost index, or studies stored with record put."""
    with client_for(node, as_key) as c:
        doc = c.dicom_reindex()
    emit(
        doc,
        as_json,
        lambda: out.print(
            f"indexed {doc['indexed']} study record(s) ({doc['instances']} instances); "
            f"{doc['already']} already indexed, {doc['failed']} failed (see the node log)"
        ),
    )


patient_app = typer.Typer(
    help="Hospital patient identifiers (DICOM PatientID, MRN) linked to ledger patients "
    "(institution admins; kept by the node, off chain).",
    no_args_is_help=True,
)


@patient_app.command("link")
def link(
    mrn: Annotated[
        str, typer.Option("--mrn", help="The hospital's identifier: the DICOM PatientID.")
    ],
    patient: Annotated[str, typer.Option("--patient", help="The ledger patient identity ID.")],
    node: NodeOpt = "",
    as_key: AsOpt = Path("admin.key"),
    as_json: JsonOpt = False,
) -> None:
    """File studies with PatientID MRN, received by the node's DICOM gateway, under PATIENT.

    Studies the gateway already filed under a pseudonymous patient for MRN (it was not
    linked when they arrived) are merged into PATIENT on the ledger (patient.merge,
    signed with this admin key)."""
    moved = 0
    with client_for(node, as_key) as c:
        doc = c.dicom_link_patient(mrn, patient)
        for _ in range(MAX_MERGE_ROUNDS):
            merge = doc.get("merge")
            if not merge or not merge["record_ids"]:
                break
            receipt = c.merge_patient(merge["pseudonym"], doc["patient"], merge["record_ids"])
            moved += int(receipt["data"]["moved"])
            doc = c.dicom_link_patient(mrn, patient)
    doc["merged_records"] = moved
    verb = "linked" if doc["created"] or moved else "already linked:"
    merged = f"; merged {moved} record(s) filed under a pseudonym" if moved else ""
    emit(doc, as_json, lambda: out.print(f"{verb} {mrn} to {doc['patient']}{merged}"))


@patient_app.command("ls")
def links(
    node: NodeOpt = "",
    as_key: AsOpt = Path("admin.key"),
    as_json: JsonOpt = False,
) -> None:
    """The patient identifiers linked at the node's institution."""
    with client_for(node, as_key) as c:
        doc = c.dicom_patient_links()

    def human() -> None:
        t = Table("MRN / PatientID", "patient", "added by")
        for e in doc["links"]:
            t.add_row(e["mrn"], e["patient"], e["added_by"])
        out.print(t)

    emit(doc, as_json, human)

"""``medledger consent|care|proxy|erasure``: patients' rights and care, from the CLI.

Every command submits one transaction and returns once it is committed; the
policy it changes applies from the next transaction on (a revocation committed
before an access event always wins).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medledger.cli.common import AsOpt, JsonOpt, NodeOpt, client_for, emit, out
from medledger.errors import InvalidInput

consent_app = typer.Typer(
    help="Patients grant, revoke and list access to their records.", no_args_is_help=True
)
care_app = typer.Typer(
    help="Care relationships: which clinician treats which patient (institution admins).",
    no_args_is_help=True,
)
proxy_app = typer.Typer(help="A patient names a guardian or proxy.", no_args_is_help=True)
erasure_app = typer.Typer(
    help="Right to be forgotten: a patient requests, a regulator or admin approves.",
    no_args_is_help=True,
)


def parse_when(value: str, *, end_of_day: bool) -> int:
    """A date (``2027-01-31``: through that day, UTC) or an ISO datetime, in ms."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            when = start + timedelta(days=1) if end_of_day else start
        else:
            when = datetime.fromisoformat(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput(f"not a date: {value!r} (use YYYY-MM-DD)", code="BAD_DATE")
    return int(when.timestamp() * 1000)


def _split(values: list[str] | None) -> list[str]:
    return sorted({v.strip() for item in values or [] for v in item.split(",") if v.strip()})


@consent_app.command("grant")
def consent_grant(
    to: Annotated[str, typer.Option("--to", help="Grantee: an identity ID or an institution.")],
    purpose: Annotated[
        list[str],
        typer.Option(
            help="treatment, referral, research, insurance, dispensing, patient-access, audit "
            "(repeat or comma-separate)."
        ),
    ],
    records: Annotated[
        list[str] | None, typer.Option("--records", help="Only these record IDs.")
    ] = None,
    record_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only records of these types.")
    ] = None,
    since: Annotated[str, typer.Option("--from", help="Start date (default: now).")] = "",
    until: Annotated[str, typer.Option(help="Last day (YYYY-MM-DD) or end time.")] = "",
    deny: Annotated[
        bool, typer.Option("--deny", help="A deny provision: forbid instead of permit.")
    ] = False,
    patient: Annotated[str, typer.Option(help="The patient, when acting as their proxy.")] = "",
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Grant (or deny) access to your records; prints the consent ID."""
    with client_for(node, as_key) as c:
        receipt = c.grant_consent(
            to,
            _split(purpose),
            patient=patient or None,
            record_ids=_split(records),
            types=_split(record_type),
            start_ms=parse_when(since, end_of_day=False) if since else 0,
            end_ms=parse_when(until, end_of_day=True) if until else 0,
            permit=not deny,
        )
    doc = {
        "consent_id": receipt["data"]["consent_id"],
        "patient": receipt["data"]["patient"],
        "height": receipt["height"],
        "tx_hash": receipt["tx_hash"],
    }
    emit(doc, as_json, lambda: out.print(f"consent {doc['consent_id']} (block {doc['height']})"))


@consent_app.command("revoke")
def consent_revoke(
    consent_id: str,
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Revoke a consent: it stops counting from the next block."""
    with client_for(node, as_key) as c:
        receipt = c.revoke_consent(consent_id)
    doc = {"consent_id": consent_id, "revoked": True, "height": receipt["height"]}
    emit(doc, as_json, lambda: out.print(f"revoked {consent_id} (block {doc['height']})"))


@consent_app.command("ls")
def consent_ls(
    patient: Annotated[str, typer.Option(help="Patient (default: yourself).")] = "",
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """A patient's active consents."""
    with client_for(node, as_key) as c:
        who = patient or c.key.id
        found = c.consents(who)

    def human() -> None:
        t = Table("consent", "provision", "grantee", "purposes", "records", "types", "until")
        for x in found:
            t.add_row(
                x["consent_id"],
                x["provision"],
                f"{x['actor_kind']}:{x['actor']}",
                ",".join(x["purposes"]),
                ",".join(x["record_ids"]) or "*",
                ",".join(x["types"]) or "*",
                _when(x["end_ms"]),
            )
        out.print(t)

    emit({"patient": who, "consents": found}, as_json, human)


def _when(ms: int) -> str:
    return "-" if not ms else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


PatientOpt = Annotated[str, typer.Option(help="Patient identity ID.")]
ClinicianOpt = Annotated[str, typer.Option(help="Clinician identity ID.")]


@care_app.command("start")
def care_start(
    patient: PatientOpt,
    clinician: ClinicianOpt,
    kind: Annotated[str, typer.Option(help="admission, referral or outpatient.")] = "admission",
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Record that a clinician of your institution treats a patient (admin key)."""
    with client_for(node, as_key) as c:
        receipt = c.start_care(patient, clinician, kind)
    doc = {"patient": patient, "clinician": clinician, "kind": kind, "height": receipt["height"]}
    emit(doc, as_json, lambda: out.print(f"care started (block {doc['height']})"))


@care_app.command("end")
def care_end(
    patient: PatientOpt,
    clinician: ClinicianOpt,
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """End a care relationship (admin key)."""
    with client_for(node, as_key) as c:
        receipt = c.end_care(patient, clinician)
    doc = {"patient": patient, "clinician": clinician, "ended": True, "height": receipt["height"]}
    emit(doc, as_json, lambda: out.print(f"care ended (block {doc['height']})"))


@care_app.command("ls")
def care_ls(
    patient: PatientOpt,
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """A patient's current care relationships."""
    with client_for(node, as_key) as c:
        found = c.care(patient)

    def human() -> None:
        t = Table("clinician", "institution", "kind", "since block")
        for r in found:
            t.add_row(r["clinician"], r["institution"], r["kind"], str(r["height"]))
        out.print(t)

    emit({"patient": patient, "relationships": found}, as_json, human)


@proxy_app.command("add")
def proxy_add(
    proxy: Annotated[str, typer.Argument(help="Identity ID of the guardian or proxy.")],
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Name a proxy who may read, grant, revoke and request erasure for you."""
    with client_for(node, as_key) as c:
        receipt = c.set_proxy(proxy, True)
    doc = {"proxy": proxy, "active": True, "height": receipt["height"]}
    emit(doc, as_json, lambda: out.print(f"{proxy} now acts for you (block {doc['height']})"))


@proxy_app.command("remove")
def proxy_remove(
    proxy: Annotated[str, typer.Argument(help="Identity ID of the proxy.")],
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Stop a proxy acting for you."""
    with client_for(node, as_key) as c:
        receipt = c.set_proxy(proxy, False)
    doc = {"proxy": proxy, "active": False, "height": receipt["height"]}
    emit(doc, as_json, lambda: out.print(f"{proxy} no longer acts for you"))


@erasure_app.command("request")
def erasure_request(
    record_id: str,
    reason: Annotated[str, typer.Option(help="Why the record should be erased.")],
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Ask for a record to be erased (patient or proxy); a regulator or admin approves."""
    with client_for(node, as_key) as c:
        receipt = c.request_erasure(record_id, reason)
    doc = {"record_id": record_id, "status": "pending", "height": receipt["height"]}
    emit(doc, as_json, lambda: out.print(f"erasure of {record_id} requested; awaiting approval"))


@erasure_app.command("approve")
def erasure_approve(
    record_id: str,
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Co-sign an erasure (regulator, or admin of the record's institution): custodians
    delete the key shares and the content becomes unreadable for everyone."""
    with client_for(node, as_key) as c:
        receipt = c.approve_erasure(record_id)
    doc = {"record_id": record_id, "status": "erased", "height": receipt["height"]}
    emit(doc, as_json, lambda: out.print(f"{record_id} erased (block {doc['height']})"))

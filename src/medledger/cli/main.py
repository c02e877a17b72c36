"""``medledger``: the command line.

Every command that prints data takes ``--json``. Errors go to stderr as
``error: CODE: message`` with exit status 1 (2 for usage errors). Commands that
talk to a node take ``--node URL`` and ``--as KEY_FILE`` (or ``MEDLEDGER_NODE``
and ``MEDLEDGER_KEY``). Commands that submit a transaction return once it is
committed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from medledger.cli import consortium, dicom, regulator, research, rights, token
from medledger.cli.common import (
    AsOpt,
    DirOpt,
    JsonOpt,
    NodeOpt,
    client_for,
    emit,
    err,
    out,
)
from medledger.crypto.keys import PrivateKey, load_key_file, save_key_file
from medledger.errors import InvalidInput, MedLedgerError
from medledger.study import STUDY_RECORD_TYPE, StudyArchive, extract_study, scan_study

app = typer.Typer(
    name="medledger",
    help="MedLedger: a consortium blockchain for medical records and images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create and inspect identity keys.", no_args_is_help=True)
identity_app = typer.Typer(
    help="Enroll and suspend identities (institution admins).", no_args_is_help=True
)
record_app = typer.Typer(help="Store, list and read medical records.", no_args_is_help=True)
node_app = typer.Typer(help="Run a node.", no_args_is_help=True)
proof_app = typer.Typer(help="Verify proofs offline.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(identity_app, name="identity")
app.add_typer(record_app, name="record")
app.add_typer(node_app, name="node")
app.add_typer(proof_app, name="proof")
storage_app = typer.Typer(
    help="Erasure-coded storage: service status, audits, repair, alerts.", no_args_is_help=True
)
app.add_typer(storage_app, name="storage")
app.add_typer(rights.consent_app, name="consent")
app.add_typer(rights.care_app, name="care")
app.add_typer(rights.proxy_app, name="proxy")
app.add_typer(rights.erasure_app, name="erasure")
app.add_typer(regulator.app, name="regulator")
app.add_typer(dicom.app, name="dicom")
app.add_typer(dicom.patient_app, name="patient")
app.add_typer(research.app, name="research")
app.add_typer(token.app, name="token")
gov_app = typer.Typer(
    help="Admit and remove member institutions (voted by 2/3+ of voting power).",
    no_args_is_help=True,
)
app.add_typer(gov_app, name="governance")

T = TypeVar("T")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


# ---- consortium ----------------------------------------------------------------------


@app.command()
def init(
    dir: DirOpt,
    institutions: Annotated[int, typer.Option(help="Number of member institutions.")] = 1,
    chain_id: Annotated[str | None, typer.Option(help="Chain ID (default: random).")] = None,
    base_port: Annotated[
        int | None, typer.Option(help="First API port (default: free ports).")
    ] = None,
    empty_block_interval_ms: Annotated[
        int | None, typer.Option(help="Produce empty blocks this often when idle (default: never).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing directory.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a consortium: genesis, node configs, node and admin keys."""
    doc = consortium.init_consortium(
        dir,
        institutions,
        chain_id=chain_id,
        base_port=base_port,
        force=force,
        empty_block_interval_ms=empty_block_interval_ms,
    )

    def human() -> None:
        out.print(f"Created consortium [bold]{doc['chain_id']}[/] in {dir}")
        for inst in doc["institutions"]:
            out.print(f"  {inst['name']}: admin key {inst['admin_key']}, API {inst['api']}")
        out.print(f"Start it with: medledger up --dir {dir}")

    emit(doc, as_json, human)


@app.command()
def join(
    dir: DirOpt,
    name: Annotated[str, typer.Option(help="The new institution's name (its directory).")],
    base_port: Annotated[int | None, typer.Option(help="API port (p2p: +100).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Prepare a new member or observer node in a consortium directory."""
    doc = consortium.join_consortium(dir, name, base_port=base_port)

    def human() -> None:
        out.print(f"prepared {name} in {doc['home']} (API {doc['api']})")
        out.print("admit it as a validator (an admin of each of 2/3+ of the members votes):")
        out.print(
            f"  medledger governance propose --add {name} --node-key {doc['node_public_key']} "
            f"--admin-key {doc['admin_public_key']} --as ADMIN_KEY --node URL"
        )
        out.print(f"then start it: medledger up --dir {dir}")

    emit(doc, as_json, human)


@app.command()
def up(dir: DirOpt, as_json: JsonOpt = False) -> None:
    """Start every node of the consortium that is not running; return when they serve."""
    nodes = consortium.up(dir)

    def human() -> None:
        for n in nodes:
            verb = "started" if n["started"] else "already running"
            out.print(f"{n['name']}: {verb} (pid {n['pid']}) at {n['api']}")

    emit({"nodes": nodes}, as_json, human)


@app.command()
def down(dir: DirOpt, as_json: JsonOpt = False) -> None:
    """Stop the consortium's nodes."""
    nodes = consortium.down(dir)

    def human() -> None:
        for n in nodes:
            out.print(f"{n['name']}: {'stopped' if n['stopped'] else 'was not running'}")

    emit({"nodes": nodes}, as_json, human)


@app.command()
def status(dir: DirOpt, as_json: JsonOpt = False) -> None:
    """Show each node: pid, height, app hash, API."""
    doc = consortium.status(dir)

    def human() -> None:
        t = Table("name", "running", "pid", "height", "app hash", "api")
        for n in doc["nodes"]:
            t.add_row(
                n["name"],
                "yes" if n["running"] else "no",
                str(n["pid"] or "-"),
                str(n["height"] if n["height"] is not None else "-"),
                (n["app_hash"] or "-")[:16],
                n["api"],
            )
        out.print(t)

    emit(doc, as_json, human)


@node_app.command("start")
def node_start(
    home: Annotated[Path, typer.Option("--home", help="The node's home directory.")],
) -> None:
    """Run one node in the foreground (Ctrl-C stops it)."""
    from medledger.node.run import run_node

    run_node(home)


@node_app.command("repair-wal")
def node_repair_wal(
    home: Annotated[Path, typer.Option("--home", help="The node's home directory.")],
    as_json: JsonOpt = False,
) -> None:
    """Cut a damaged consensus write-ahead log at its first damaged record.

    Run it only when the node refuses to start with WAL_CORRUPT, with the node
    stopped. Records after the damage are lost; the node re-learns the current
    height from its peers.
    """
    from medledger.consensus.wal import read_wal
    from medledger.node.config import load_config

    cfg = load_config(home)
    path = home / cfg.data_dir / "consensus.wal"
    before = path.stat().st_size if path.exists() else 0
    records = read_wal(path, repair=True)
    after = path.stat().st_size if path.exists() else 0
    doc = {"wal": str(path), "records_kept": len(records), "bytes_cut": before - after}
    emit(
        doc, as_json, lambda: out.print(f"kept {len(records)} records, cut {before - after} bytes")
    )


@gov_app.command("propose")
def governance_propose(
    add: Annotated[str | None, typer.Option(help="Institution to admit.")] = None,
    remove: Annotated[str | None, typer.Option(help="Member institution to remove.")] = None,
    node_key: Annotated[
        Path | None, typer.Option(help="Key file (or public key hex) of the new member's node.")
    ] = None,
    admin_key: Annotated[
        Path | None, typer.Option(help="Key file (or public key hex) of the new member's admin.")
    ] = None,
    power: Annotated[int, typer.Option(help="Voting power of the new member.")] = 10,
    node: NodeOpt = "",
    as_key: AsOpt = Path("admin.key"),
    as_json: JsonOpt = False,
) -> None:
    """Propose admitting (--add) or removing (--remove) a member; counts as a yes vote."""
    if (add is None) == (remove is None):
        raise InvalidInput("give exactly one of --add or --remove", code="BAD_ARGUMENT")
    with client_for(node, as_key) as c:
        if add is not None:
            if node_key is None or admin_key is None:
                raise InvalidInput("--add needs --node-key and --admin-key", code="BAD_ARGUMENT")
            r = c.propose_member(
                "add",
                add,
                validator_public_key=_public_key_arg(node_key),
                admin_public_key=_public_key_arg(admin_key),
                power=power,
            )
        else:
            assert remove is not None
            r = c.propose_member("remove", remove)
    data = r["data"]
    emit(r, as_json, lambda: out.print(f"proposal {data['proposal_id']}: {data['status']}"))


@gov_app.command("vote")
def governance_vote(
    proposal_id: str,
    reject: Annotated[bool, typer.Option(help="Vote no (default: yes).")] = False,
    node: NodeOpt = "",
    as_key: AsOpt = Path("admin.key"),
    as_json: JsonOpt = False,
) -> None:
    """Vote on a membership proposal as your institution's admin."""
    with client_for(node, as_key) as c:
        r = c.vote_member(proposal_id, not reject)
    data = r["data"]
    emit(r, as_json, lambda: out.print(f"proposal {data['proposal_id']}: {data['status']}"))


@gov_app.command("ls")
def governance_ls(
    node: NodeOpt = "", as_key: AsOpt = Path("admin.key"), as_json: JsonOpt = False
) -> None:
    """List membership proposals."""
    with client_for(node, as_key) as c:
        doc = c.get_json("/api/v1/governance/proposals")
    emit(doc, as_json, lambda: out.print(doc))


@app.command()
def validators(node: NodeOpt = "", as_key: AsOpt = Path("key"), as_json: JsonOpt = False) -> None:
    """Show the validator set, the next one, and jailed validators (with their evidence)."""
    with client_for(node, as_key) as c:
        doc = c.get_json("/api/v1/validators")

    def human() -> None:
        t = Table("institution", "id", "power")
        for v in doc["validators"]:
            t.add_row(v["name"], v["id"], str(v["power"]))
        out.print(t)
        for j in doc["jailed"]:
            out.print(
                f"jailed: {j['institution']} ({j['validator']}) for equivocation at height {j['height']}"
            )

    emit(doc, as_json, human)


def _public_key_arg(value: Path) -> bytes:
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return bytes.fromhex(text)
    return load_key_file(value).public_key.raw


# ---- keys ------------------------------------------------------------------------------


@keys_app.command("new")
def keys_new(
    out_file: Annotated[
        Path, typer.Option("--out", help="Where to write the key file (mode 0600).")
    ],
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a new Ed25519 identity key."""
    key = PrivateKey.generate()
    save_key_file(out_file, key, overwrite=force)
    doc = {"id": key.id, "public_key": key.public_key.hex(), "file": str(out_file)}
    emit(
        doc,
        as_json,
        lambda: out.print(f"{key.id}  (public key {key.public_key.hex()}) -> {out_file}"),
    )


@keys_app.command("show")
def keys_show(key_file: Path, as_json: JsonOpt = False) -> None:
    """Show the ID and public key of a key file."""
    key = load_key_file(key_file)
    doc = {"id": key.id, "public_key": key.public_key.hex()}
    emit(doc, as_json, lambda: out.print(f"{key.id}  {key.public_key.hex()}"))


# ---- identities ----------------------------------------------------------------------------


@identity_app.command("enroll")
def identity_enroll(
    role: Annotated[
        str,
        typer.Option(
            help="clinician, patient, researcher, regulator, pharmacy, insurer, admin, service or node"
        ),
    ],
    id: Annotated[str, typer.Option("--id", help="Identity ID (from 'keys new').")],
    node: NodeOpt = "",
    as_key: AsOpt = Path("admin.key"),
    as_json: JsonOpt = False,
) -> None:
    """Enroll an identity with one role in the admin's institution."""
    with client_for(node, as_key) as c:
        r = c.enroll(id, role)
    emit(r, as_json, lambda: out.print(f"enrolled {id} as {role} (block {r['height']})"))


@identity_app.command("suspend")
def identity_suspend(
    id: Annotated[str, typer.Option("--id", help="Identity ID.")],
    reason: Annotated[
        str, typer.Option(help="Why (kept on the ledger; no patient data).")
    ] = "suspended by admin",
    node: NodeOpt = "",
    as_key: AsOpt = Path("admin.key"),
    as_json: JsonOpt = False,
) -> None:
    """Suspend an identity: it can no longer transact or read."""
    with client_for(node, as_key) as c:
        r = c.suspend(id, reason)
    emit(r, as_json, lambda: out.print(f"suspended {id} (block {r['height']})"))


@identity_app.command("show")
def identity_show(
    id: str, node: NodeOpt = "", as_key: AsOpt = Path("admin.key"), as_json: JsonOpt = False
) -> None:
    """Show an identity's role, institution and status."""
    with client_for(node, as_key) as c:
        doc = c.identity(id)
    emit(doc, as_json, lambda: out.print(doc))


# ---- records -----------------------------------------------------------------------------------


@record_app.command("put")
def record_put(
    path: Annotated[
        Path,
        typer.Argument(
            help="File to store, or a folder of DICOM files (an imaging study, stored as one "
            "record). Encrypted on this machine first."
        ),
    ],
    patient: Annotated[str, typer.Option(help="Patient identity ID.")],
    type: Annotated[
        str,
        typer.Option(
            "--type", help="Record type, e.g. note, lab, imaging (a folder: imaging-study)."
        ),
    ] = "",
    k: Annotated[
        int | None, typer.Option("--k", help="Data shards per stripe (default: the node's choice).")
    ] = None,
    m: Annotated[
        int | None, typer.Option("--m", help="Parity shards per stripe (default: 2 if possible).")
    ] = None,
    deidentified: Annotated[
        bool,
        typer.Option(
            "--deidentified",
            help="The content carries no direct identifiers (researchers may read it).",
        ),
    ] = False,
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Encrypt a file or study, store it erasure-coded across institutions, register it."""
    study: StudyArchive | None = None
    if path.is_dir():
        study = scan_study(path)
        size = study.size
        record_type = type or STUDY_RECORD_TYPE
    elif path.is_file():
        size = path.stat().st_size
        record_type = type or "document"
    else:
        raise InvalidInput(f"{path} is not a readable file or folder", code="FILE_NOT_FOUND")
    with client_for(node, as_key) as c, _progress() as prog:
        task = prog.add_task(f"put {path.name}", total=size)

        def advance(n: int) -> None:
            prog.advance(task, n)

        if study is not None:
            with study.open() as src:
                r = c.put_stream(
                    src,
                    size,
                    patient=patient,
                    record_type=record_type,
                    progress=advance,
                    k=k,
                    m=m,
                    deidentified=deidentified,
                )
        else:
            r = c.put_record(
                path,
                patient=patient,
                record_type=record_type,
                progress=advance,
                k=k,
                m=m,
                deidentified=deidentified,
            )
    doc: dict[str, Any] = {
        "record_id": r.record_id,
        "tx_hash": r.tx_hash,
        "height": r.height,
        "type": record_type,
        "content_hash": r.manifest_cid,
        "size": r.size,
        "chunk_count": r.chunk_count,
        "k": r.k,
        "m": r.m,
        "placement": r.placement,
        "stored_bytes": r.stored_bytes,
        "custodians": r.custodians,
        "threshold": r.threshold,
        "deidentified": deidentified,
    }
    if study is not None:
        doc["study"] = study.summary()
    emit(
        doc,
        as_json,
        lambda: out.print(
            f"stored {path} as record {r.record_id} (block {r.height}; "
            f"{r.k}+{r.m} shards over {', '.join(r.placement)}; key shares: "
            f"{r.threshold} of {len(r.custodians)} custodians)"
        ),
    )


@record_app.command("get")
def record_get(
    record_id: str,
    out_path: Annotated[
        Path,
        typer.Option(
            "--out", help="Where to write the content (an imaging study: a folder to extract to)."
        ),
    ],
    purpose: Annotated[
        str, typer.Option(help="treatment, patient-access, research, insurance, referral, audit")
    ] = "treatment",
    archive: Annotated[
        bool, typer.Option("--archive", help="Write an imaging study as its tar archive.")
    ] = False,
    break_glass: Annotated[
        bool,
        typer.Option(
            "--break-glass",
            help="Emergency read outside care and consent (clinicians; needs --reason). "
            "Flagged to the patient and the regulator.",
        ),
    ] = False,
    reason: Annotated[str, typer.Option(help="Why (required with --break-glass).")] = "",
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Log the read on the ledger, then fetch, verify and decrypt the record."""
    if break_glass and not reason.strip():
        raise InvalidInput("--break-glass needs --reason", code="REASON_REQUIRED")
    with client_for(node, as_key) as c:
        try:
            is_study = c.record(record_id)["type"] == STUDY_RECORD_TYPE and not archive
        except MedLedgerError:
            is_study = False  # metadata hidden: the read itself is decided (and logged) on chain
        target = out_path
        if is_study:
            if out_path.exists() and not out_path.is_dir():
                raise InvalidInput(f"{out_path} exists and is not a folder", code="FILE_EXISTS")
            out_path.mkdir(parents=True, exist_ok=True)
            target = out_path / f".{record_id}.tar.part"
        with _progress() as prog:
            task = prog.add_task(f"get {record_id[:12]}", total=None)
            r = c.get_record(
                record_id,
                target,
                purpose=purpose,
                progress=lambda n: prog.advance(task, n),
                on_size=lambda s: prog.update(task, total=s),
                break_glass=break_glass,
                reason=reason,
            )
    if is_study:
        try:
            with open(target, "rb") as fh:
                files = extract_study(fh, out_path)
        finally:
            target.unlink(missing_ok=True)
        r["out"] = str(out_path)
        r["files"] = len(files)
    emit(
        r,
        as_json,
        lambda: out.print(
            f"wrote {r['size']} bytes to {out_path} (read logged in block {r['height']})"
        ),
    )


@record_app.command("ls")
def record_ls(
    patient: Annotated[str, typer.Option(help="Patient identity ID.")],
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """List a patient's records (metadata only)."""
    with client_for(node, as_key) as c:
        records = c.list_records(patient)

    def human() -> None:
        t = Table("record", "type", "size", "institution", "height")
        for r in records:
            t.add_row(r["record_id"], r["type"], str(r["size"]), r["institution"], str(r["height"]))
        out.print(t)

    emit({"patient": patient, "records": records}, as_json, human)


@record_app.command("show")
def record_show(
    record_id: str, node: NodeOpt = "", as_key: AsOpt = Path("key"), as_json: JsonOpt = False
) -> None:
    """Show one record's on-chain metadata."""
    with client_for(node, as_key) as c:
        doc = c.record(record_id)
    emit(doc, as_json, lambda: out.print(doc))


# ---- storage ---------------------------------------------------------------------------------------


@storage_app.command("status")
def storage_status(
    node: NodeOpt = "", as_key: AsOpt = Path("key"), as_json: JsonOpt = False
) -> None:
    """Every institution's shard service: health, usage and shards placed there."""
    with client_for(node, as_key) as c:
        doc = c.get_json("/api/v1/storage/status")

    def human() -> None:
        t = Table("institution", "healthy", "objects", "bytes", "shards placed", "backend")
        for s in doc["services"]:
            t.add_row(
                s["institution"],
                "yes" if s["healthy"] else f"NO ({s.get('error', '')})",
                str(s.get("objects", "")),
                str(s.get("bytes", "")),
                str(s["shards_placed"]),
                str(s.get("backend", "")),
            )
        out.print(t)

    emit(doc, as_json, human)


@storage_app.command("audit")
def storage_audit(
    all_shards: Annotated[
        bool, typer.Option("--all", help="Challenge every shard, not the seeded sample.")
    ] = False,
    repair: Annotated[bool, typer.Option("--repair", help="Repair what fails.")] = False,
    height: Annotated[
        int, typer.Option(help="Block whose hash seeds the challenges (default: latest).")
    ] = 0,
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Challenge stored shards now; failures are recorded on chain as alerts."""
    params = {"all": str(all_shards).lower(), "repair": str(repair).lower(), "height": height}
    with client_for(node, as_key) as c:
        doc = c.post_json("/api/v1/storage/audit", params=params)

    def human() -> None:
        out.print(
            f"audited {doc['checked']} shards (seed block {doc['seed_height']}): "
            f"{len(doc['failures'])} failures, {len(doc['alerts'])} alerts"
        )
        for f in doc["failures"]:
            out.print(
                f"  {f['record_id']} column {f['column']} at {f['institution']}: "
                f"{f['reason']} (stripes {f['stripes']})"
            )

    emit(doc, as_json, human)
    repaired = all(r["status"] == "repaired" for r in doc.get("repairs", []))
    if doc["failures"] and (not repair or not repaired):
        raise typer.Exit(3)


@storage_app.command("repair")
def storage_repair(
    record: Annotated[str, typer.Option(help="Only this record (default: all).")] = "",
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Check every shard and rebuild missing or corrupt ones from the others."""
    with client_for(node, as_key) as c:
        doc = c.post_json("/api/v1/storage/repair", params={"record": record} if record else None)

    def human() -> None:
        if not doc["repairs"]:
            out.print("every shard is in place")
        for r in doc["repairs"]:
            out.print(
                f"{r['record_id']} column {r['column']} at {r['institution']}: {r['status']}"
                + (f" -> {r['to']} ({r['shards']} shards)" if r["status"] == "repaired" else "")
            )

    emit(doc, as_json, human)
    if any(r["status"] != "repaired" for r in doc["repairs"]):
        raise typer.Exit(3)


@storage_app.command("alerts")
def storage_alerts(
    node: NodeOpt = "", as_key: AsOpt = Path("key"), as_json: JsonOpt = False
) -> None:
    """Storage alerts and repairs recorded on the ledger."""
    with client_for(node, as_key) as c:
        doc = c.get_json("/api/v1/storage/alerts")

    def human() -> None:
        t = Table("height", "kind", "record", "details")
        for e in doc["events"]:
            rest = {
                k: v
                for k, v in e.items()
                if k not in ("height", "kind", "record_id", "actor", "time_ms")
            }
            t.add_row(
                str(e["height"]),
                e["kind"],
                e["record_id"],
                " ".join(f"{k}={v}" for k, v in rest.items()),
            )
        out.print(t)

    emit(doc, as_json, human)


# ---- audit and proofs -----------------------------------------------------------------------------


@app.command()
def audit(
    patient: Annotated[str, typer.Option(help="Identity whose audit trail to list.")],
    proof_out: Annotated[
        Path | None, typer.Option(help="Also save the events with proofs here.")
    ] = None,
    since_height: Annotated[
        int | None, typer.Option(help="Only events from this block height on.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many events.")] = None,
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """List who did what to a patient's data, from the ledger."""
    with client_for(node, as_key) as c:
        events = c.audit(patient, since_height=since_height, limit=limit)
        if proof_out is not None:
            proof_out.write_bytes(c.audit_proof(patient))

    def human() -> None:
        t = Table("height", "action", "actor", "record", "outcome", "detail")
        for e in events:
            t.add_row(
                str(e["height"]),
                e["action"],
                e["actor"],
                e["record_id"] or "-",
                e["outcome"],
                e["detail"],
            )
        out.print(t)
        if proof_out is not None:
            out.print(
                f"proofs saved to {proof_out}; check them with: medledger proof verify {proof_out}"
            )

    emit({"patient": patient, "events": events}, as_json, human)


@proof_app.command("verify")
def proof_verify(
    file: Path,
    genesis: Annotated[
        Path | None, typer.Option(help="Trust only this genesis's validators.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check an audit proof file offline; fail on any tampered byte."""
    from medledger.ledger.genesis import load_genesis
    from medledger.ledger.proofs import verify_bundle

    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{file} not found", code="FILE_NOT_FOUND")
    trusted = load_genesis(genesis).validators if genesis else None
    events = verify_bundle(data, trusted_validators=trusted)
    doc = {
        "valid": True,
        "validators_pinned": trusted is not None,
        "events": [
            {
                "height": v.height,
                "time_ms": v.time_ms,
                "tx_hash": v.tx_hash,
                "action": v.event.action,
                "actor": v.event.actor,
                "subject": v.event.subject,
                "record_id": v.event.record_id or None,
                "outcome": v.event.outcome,
                "detail": v.event.detail,
            }
            for v in events
        ],
    }

    def human() -> None:
        out.print(f"valid: {len(events)} events verified against signed headers")
        if trusted is None:
            out.print(
                "note: the validator set was taken from the proof file itself; pass "
                "--genesis GENESIS.json to check it against the consortium you trust"
            )

    emit(doc, as_json, human)


# ---- demo -------------------------------------------------------------------------------------------


@app.command()
def demo(
    dir: DirOpt = Path(".demo"),
    institutions: Annotated[int, typer.Option(help="Member institutions.")] = 4,
) -> None:
    """Create and start a local consortium with sample identities and records."""
    from medledger.cli.demo import run_demo

    run_demo(dir, institutions, out)


def main() -> None:
    try:
        app()
    except MedLedgerError as exc:
        # soft_wrap: one line whatever the width, so scripts can parse it
        err.print(
            f"error: {exc.code}: {exc.message}", markup=False, highlight=False, soft_wrap=True
        )
        sys.exit(1)

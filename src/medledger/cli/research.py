"""``medledger research``: de-identified copies of imaging studies for research projects.

``research deidentify RECORD_ID --project NAME --project-key FILE`` reads an
imaging-study record with the caller's key (an ordinary, audited ``record.read``
for the purpose ``research``), de-identifies every instance with the PS3.15 Basic
Profile (``medledger.dicom.deidentify``), refuses when an instance may carry
burned-in annotation (unless ``--allow-burned-in``) and stores the result as a new
``imaging-study`` record of the same ledger patient, flagged ``deidentified`` so
that researchers holding the patient's research consent may read it.

The decrypted study only ever sits in a private temporary folder (0700) that is
removed when the command ends, whatever happens. See ``docs/deidentification.md``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from medledger.cli.common import AsOpt, JsonOpt, NodeOpt, client_for, emit, err, out
from medledger.client import Client
from medledger.dicom.deidentify import (
    DATE_OPTIONS,
    DatesOption,
    Project,
    deidentify,
    load_part10,
)
from medledger.errors import Forbidden, InvalidInput
from medledger.fsutil import fsync_path
from medledger.study import STUDY_RECORD_TYPE, extract_study, scan_study

app = typer.Typer(
    help="Research: de-identified copies of imaging studies (PS3.15 Basic Profile).",
    no_args_is_help=True,
)

READ_PURPOSE = "research"
"""The purpose of the audited read of the original study (docs/deidentification.md)."""

PROJECT_KEY_BYTES = 32
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


# --------------------------------------------------------------------------- project key


def load_or_create_project_key(path: Path) -> tuple[bytes, bool]:
    """The project key in ``path`` and whether it was just created.

    A missing file gets 32 random bytes, mode 0600, created atomically and never
    over an existing file (two concurrent runs end up with the same key). An
    existing file must be readable by its owner only (``PROJECT_KEY_EXPOSED``)
    and hold 16 to 1024 bytes (``BAD_PROJECT_KEY``).
    """
    created = False
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(PROJECT_KEY_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # fails if another run created it meanwhile
                created = True
                fsync_path(path.parent)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"project key {path} is not a file", code="BAD_PROJECT_KEY")
        if st.st_mode & 0o077:
            raise InvalidInput(
                f"project key {path} is readable by others (chmod 600 it)",
                code="PROJECT_KEY_EXPOSED",
            )
        with open(path, "rb") as fh:
            key = fh.read(1025)
    except OSError:
        raise InvalidInput(f"project key {path} cannot be read", code="BAD_PROJECT_KEY")
    if not 16 <= len(key) <= 1024:
        raise InvalidInput(f"project key {path} must hold 16 to 1024 bytes", code="BAD_PROJECT_KEY")
    return key, created


# --------------------------------------------------------------------------- the flow


def deidentify_record(
    c: Client,
    record_id: str,
    project: Project,
    *,
    dates: DatesOption = "remove",
    allow_burned_in: bool = False,
    on_instance: Callable[[int, int], None] | None = None,
    upload_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Read ``record_id``, de-identify it for ``project`` and store the copy.

    Raises ``NOT_A_STUDY`` (not an imaging study), ``ALREADY_DEIDENTIFIED``,
    ``BURNED_IN_ANNOTATION`` (:class:`Forbidden`, nothing stored), the read's own
    errors (``ACCESS_DENIED``...) and :func:`deidentify`'s (``NOT_DICOM``...).
    """
    meta = c.record(record_id)
    if meta.get("type") != STUDY_RECORD_TYPE:
        raise InvalidInput(
            f"record {record_id} is not an {STUDY_RECORD_TYPE} record", code="NOT_A_STUDY"
        )
    if meta.get("deidentified"):
        raise InvalidInput(
            f"record {record_id} is already de-identified", code="ALREADY_DEIDENTIFIED"
        )
    patient = str(meta["patient"])
    work = Path(tempfile.mkdtemp(prefix="medledger-deid-"))  # 0700
    try:
        tar = work / "source.tar"
        read = c.get_record(record_id, tar, purpose=READ_PURPOSE)
        with open(tar, "rb") as fh:
            sources = extract_study(fh, work / "source")
        tar.unlink()
        out_dir = work / "deidentified"
        out_dir.mkdir(mode=0o700)
        actions: Counter[str] = Counter()
        flagged: list[str] = []
        skipped = 0
        study_uids: set[str] = set()
        sources.sort()
        for i, path in enumerate(sources, 1):
            ds = load_part10(path.read_bytes())
            if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_SOP_CLASS:
                skipped += 1  # a DICOMDIR indexes the files and names the patient: dropped
            else:
                r = deidentify(ds, project, patient, dates=dates)
                target = out_dir / f"{r.sop_uid}.dcm"
                n = 1
                while target.exists():  # the same instance twice in the source
                    n += 1
                    target = out_dir / f"{r.sop_uid}-{n}.dcm"
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(r.data)
                actions.update(r.actions)
                study_uids.add(r.study_uid)
                if r.burned_in_risk:
                    flagged.append(r.sop_uid)
            path.unlink()  # the identified copy goes as soon as it is done
            if on_instance is not None:
                on_instance(i, len(sources))
        if flagged and not allow_burned_in:
            raise Forbidden(
                f"{len(flagged)} of {len(sources) - skipped} instances may show burned-in "
                "annotation (text in the pixels); nothing was stored. Check them and pass "
                "--allow-burned-in to store anyway",
                code="BURNED_IN_ANNOTATION",
            )
        study = scan_study(out_dir)
        with study.open() as src:
            put = c.put_stream(
                src,
                study.size,
                patient=patient,
                record_type=STUDY_RECORD_TYPE,
                progress=upload_progress,
                deidentified=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "record_id": put.record_id,
        "tx_hash": put.tx_hash,
        "height": put.height,
        "source_record_id": record_id,
        "read_access_tx": read["access_tx"],
        "read_purpose": READ_PURPOSE,
        "patient": patient,
        "project": project.name,
        "pseudonym": project.pseudonym(patient),
        "dates": dates,
        "instances": study.instances,
        "skipped": skipped,
        "study_uid": study.study_uid,
        "size": put.size,
        "burned_in": {"instances": flagged, "allowed": allow_burned_in},
        "actions": dict(sorted(actions.items())),
        "deidentified": True,
    }


# --------------------------------------------------------------------------- command


@app.command("deidentify")
def deidentify_cmd(
    record_id: Annotated[str, typer.Argument(help="The imaging-study record to de-identify.")],
    project: Annotated[str, typer.Option(help="Research project name (part of the pseudonyms).")],
    project_key: Annotated[
        Path,
        typer.Option(
            "--project-key",
            help="The project's secret key file (created with 32 random bytes, mode 0600, "
            "if missing). Whoever holds it can re-link pseudonyms: keep it in the institution.",
        ),
    ],
    dates: Annotated[
        str,
        typer.Option(
            help="remove (Basic Profile), keep (Retain Full Dates) or shift "
            "(Modified Dates: moved back 1-3650 days per patient and project)."
        ),
    ] = "remove",
    allow_burned_in: Annotated[
        bool,
        typer.Option(
            "--allow-burned-in",
            help="Store even if instances may show burned-in annotation (checked by a person).",
        ),
    ] = False,
    out_record: Annotated[
        bool,
        typer.Option(
            "--out-record/--no-out-record",
            help="Store the de-identified study as a new record (the only output for now).",
        ),
    ] = True,
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """De-identify a study (PS3.15 Basic Profile) into a new record of the same patient.

    The original is read with your key (audited, purpose research)."""
    if dates not in DATE_OPTIONS:
        raise InvalidInput("--dates is one of remove, keep, shift", code="BAD_DATES_OPTION")
    if not out_record:
        raise InvalidInput("--out-record is the only output", code="NO_OUTPUT")
    dates_opt: DatesOption = dates
    key, created = load_or_create_project_key(project_key)
    proj = Project(project, key)
    if created and not as_json:
        err.print(f"created project key {project_key} (keep it in the institution)")
    with client_for(node, as_key) as c:
        if as_json:
            doc = deidentify_record(
                c, record_id, proj, dates=dates_opt, allow_burned_in=allow_burned_in
            )
        else:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=err,
                transient=True,
            ) as prog:
                task = prog.add_task("de-identify", total=None)

                def on_instance(i: int, n: int) -> None:
                    prog.update(task, completed=i, total=n)

                doc = deidentify_record(
                    c,
                    record_id,
                    proj,
                    dates=dates_opt,
                    allow_burned_in=allow_burned_in,
                    on_instance=on_instance,
                )
    doc["project_key_created"] = created
    emit(
        doc,
        as_json,
        lambda: out.print(
            f"stored {doc['instances']} de-identified instances of {record_id} as record "
            f"{doc['record_id']} (pseudonym {doc['pseudonym']}, dates {doc['dates']}, "
            f"{len(doc['burned_in']['instances'])} flagged for burned-in annotation)"
        ),
    )

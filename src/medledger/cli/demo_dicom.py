"""The DICOM part of ``medledger demo``: a PACS sends a study by C-STORE to the first
node, whose gateway seals it into one imaging-study record of the demo patient."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from medledger.client import Client
from medledger.crypto.keys import PrivateKey
from medledger.errors import MedLedgerError, NotFound

DEMO_AE = "DEMO_PACS"
DEMO_MRN = "DEMO-MRN-0001"
DEMO_FILES = ("CT_small.dcm", "MR_small.dcm")
SEAL_WAIT_S = 60.0


def run_dicom_demo(
    api: str, admin: PrivateKey, pacs: PrivateKey, patient: str, samples: Path, out: Console
) -> dict[str, Any] | None:
    """Send a two-instance study and wait until it is a record; None if DICOM is off."""
    with Client(api, admin) as c:
        dicom = c.status().get("dicom") or {}
        if not dicom.get("port"):
            return None
        gateway = str(dicom["gateway_id"])
        try:
            c.identity(gateway)
        except NotFound:
            c.enroll(gateway, "service")
            out.print(f"enrolled the node's DICOM gateway {gateway} as service")
        c.dicom_allow(DEMO_AE, pacs.id)
        c.dicom_link_patient(DEMO_MRN, patient)
    study_uid = _send_study(dicom, samples)
    out.print(
        f"a PACS ({DEMO_AE}) sent a {len(DEMO_FILES)}-instance study by C-STORE to "
        f"{dicom['ae_title']} at {dicom['host']}:{dicom['port']}"
    )
    with Client(api, admin) as c:
        deadline = time.monotonic() + SEAL_WAIT_S
        while time.monotonic() < deadline:
            records = [r for r in c.list_records(patient) if r["type"] == "imaging-study"]
            if records:
                record = records[-1]
                out.print(
                    f"  the gateway sealed it into record {record['record_id']} "
                    "(encrypted, erasure-coded, one transaction)"
                )
                return {"dicom": dicom, "study_uid": study_uid, "record": record}
            time.sleep(0.5)
    out.print("[yellow]  the study was not sealed in time; see the node log[/]")
    return {"dicom": dicom, "study_uid": study_uid, "record": None}


def _send_study(dicom: dict[str, Any], samples: Path) -> str:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom.presentation import StoragePresentationContexts

    study_uid = generate_uid()
    datasets = []
    for name in DEMO_FILES:
        path = get_testdata_file(name)
        if path is None:
            raise MedLedgerError(f"pydicom's test file {name} is missing", code="DEMO_FAILED")
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = DEMO_MRN
        ds.PatientName = "DEMO^SYNTHETIC"
        datasets.append(ds)
    folder = samples / "dicom-study"
    folder.mkdir(exist_ok=True)
    for ds in datasets:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    ae = AE(ae_title=DEMO_AE)
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate(dicom["host"], int(dicom["port"]), ae_title=dicom["ae_title"])
    if not assoc.is_established:
        raise MedLedgerError("the node refused the demo PACS's association", code="DEMO_FAILED")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) != 0:
                raise MedLedgerError("the node refused a demo instance", code="DEMO_FAILED")
    finally:
        assoc.release()
    return str(study_uid)

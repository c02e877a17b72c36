"""``medledger demo``: a local consortium with sample identities and records."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from medledger.cli import consortium
from medledger.cli.demo_dicom import DEMO_AE, DEMO_MRN, run_dicom_demo
from medledger.client import Client
from medledger.crypto.keys import PrivateKey, load_key_file, save_key_file
from medledger.errors import Forbidden, NotFound

PEOPLE = [
    ("doctor", "clinician"),
    ("patient", "patient"),
    ("researcher", "researcher"),
    ("regulator", "regulator"),
    ("pacs", "service"),
]


def _key(path: Path) -> PrivateKey:
    if path.exists():
        return load_key_file(path)
    key = PrivateKey.generate()
    save_key_file(path, key)
    return key


def run_demo(root: Path, institutions: int, out: Console) -> None:
    fresh = not (root / "genesis.json").exists()
    if not fresh and len(consortium.node_homes(root)) != institutions:
        out.print(f"[yellow]{root} holds another consortium; remove it or pass --dir[/]")
    if fresh:
        out.print(f"[bold]Creating a {institutions}-institution consortium in {root}[/]")
        consortium.init_consortium(root, institutions)
    nodes = consortium.up(root)
    first = nodes[0]
    api = first["api"]
    inst = root / first["name"]
    admin = load_key_file(inst / "admin.key")
    people = root / "people"
    keys = {name: _key(people / f"{name}.key") for name, _ in PEOPLE}
    samples = root / "samples"
    samples.mkdir(exist_ok=True)
    note = samples / "discharge-note.txt"
    note.write_text(
        "Discharge summary (synthetic sample, no real patient)\n"
        "Diagnosis: community-acquired pneumonia, resolved.\n"
        "Plan: follow-up chest X-ray in 6 weeks.\n"
    )
    xray = samples / "chest-xray.bin"
    if not xray.exists():
        xray.write_bytes(os.urandom(3 * 1024 * 1024 + 1234))

    with Client(api, admin) as c:
        for name, role in PEOPLE:
            if _enrolled(c, keys[name].id):
                continue
            c.enroll(keys[name].id, role)
            out.print(f"enrolled {name:<10} {keys[name].id} as {role}")
    patient = keys["patient"].id
    with Client(api, keys["doctor"]) as doc:
        r1 = doc.put_record(note, patient=patient, record_type="note")
        r2 = doc.put_record(xray, patient=patient, record_type="imaging")
    out.print(f"doctor stored record {r1.record_id} (note) and {r2.record_id} (imaging)")
    lost = f"; it survives any {r2.m} of them losing their shards" if r2.m else ""
    out.print(
        f"  stored as {r2.k}+{r2.m} erasure-coded shards over {', '.join(r2.placement)}"
        f" ({r2.stored_bytes / max(r2.size, 1):.1f}x the bytes{lost})"
    )
    other = nodes[-1]  # with several institutions: read through another member's node
    with Client(other["api"], keys["patient"]) as pt:
        pt.get_record(
            r1.record_id, samples / "note-as-read-by-patient.txt", purpose="patient-access"
        )
    out.print(
        f"patient read the note back through {other['name']}'s node: "
        "samples/note-as-read-by-patient.txt"
    )
    specialist = _key(people / "specialist.key")
    other_admin = load_key_file(root / other["name"] / "admin.key")
    with Client(other["api"], other_admin) as c:
        if not _enrolled(c, specialist.id):
            c.enroll(specialist.id, "clinician")
    with Client(other["api"], specialist) as sp:
        try:
            sp.get_record(r2.record_id, samples / "denied.bin")
        except Forbidden as exc:
            out.print(f"a specialist at {other['name']} was denied: {exc.message}")
        with Client(api, keys["patient"]) as pt:
            consent = pt.grant_consent(specialist.id, ["treatment"], record_ids=[r2.record_id])
        out.print(f"patient granted consent {consent['data']['consent_id']} to the specialist")
        sp.get_record(r2.record_id, samples / "xray-as-read-by-specialist.bin")
        out.print("  the specialist read the X-ray: samples/xray-as-read-by-specialist.bin")
    with Client(api, keys["researcher"]) as rs:
        try:
            rs.get_record(r2.record_id, samples / "denied.bin", purpose="research")
        except Forbidden as exc:
            out.print(f"researcher was denied, and the denial is on the ledger ({exc.code})")
    with Client(api, admin) as c:  # the doctor treats the patient: their studies too
        if not any(r["clinician"] == keys["doctor"].id for r in c.care(patient)):
            c.start_care(patient, keys["doctor"].id)
    study = run_dicom_demo(api, admin, keys["pacs"], patient, samples, out)
    d = str(root)
    out.print()
    out.print("[bold]The consortium is running.[/] Try (after: source .venv/bin/activate):")
    out.print(f"  medledger status --dir {d}")
    out.print(f"  export MEDLEDGER_NODE={api}")
    out.print(f"  medledger record ls --patient {patient} --as {d}/people/patient.key")
    out.print(
        f"  medledger audit --patient {patient} --as {d}/people/patient.key --proof-out audit.proof"
    )
    out.print(f"  medledger proof verify audit.proof --genesis {d}/genesis.json")
    out.print(f"  medledger record get {r2.record_id} --out xray.bin --as {d}/people/doctor.key")
    out.print(f"  medledger consent ls --as {d}/people/patient.key")
    out.print(
        f"  medledger record get {r1.record_id} --out note.txt --break-glass "
        f'--reason "emergency" --as {d}/people/specialist.key'
    )
    out.print(f"  medledger regulator alerts --as {d}/people/regulator.key")
    out.print(f"  medledger regulator stats --as {d}/people/regulator.key")
    admin_key = f"{d}/{first['name']}/admin.key"
    out.print(f"  medledger storage status --as {admin_key}")
    out.print(f"  medledger storage audit --all --as {admin_key}")
    if study is not None:
        dicom = study["dicom"]
        out.print("  DICOM and DICOMweb, as the doctor (in the patient's care):")
        out.print(f"    export TOKEN=$(medledger token issue --as {d}/people/doctor.key)")
        out.print(f'    curl -H "Authorization: Bearer $TOKEN" {api}/dicom-web/studies')
        out.print(
            f'    curl -H "Authorization: Bearer $TOKEN" '
            f"{api}/dicom-web/studies/{study['study_uid']}/metadata"
        )
        out.print(f"    curl {api}/fhir/metadata")
        out.print(
            f'    curl -H "Authorization: Bearer $TOKEN" "{api}/fhir/ImagingStudy?patient={patient}"'
        )
        out.print(
            f"    findscu -S -aet {DEMO_AE} -aec {dicom['ae_title']} -k QueryRetrieveLevel=STUDY "
            f"-k PatientID={DEMO_MRN} -k StudyInstanceUID -k ModalitiesInStudy "
            f"{dicom['host']} {dicom['port']}"
        )
    out.print(f"  API docs: {api}/api/v1/docs   metrics: {api}/metrics")
    out.print("  Stop it with: make down")


def _enrolled(c: Client, identity_id: str) -> bool:
    try:
        c.identity(identity_id)
        return True
    except NotFound:
        return False

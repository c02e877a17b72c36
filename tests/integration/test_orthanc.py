"""Interoperability with a real PACS: Orthanc (Debian's package) and a MedLedger node.

One running four-institution consortium for the module (the first node, HOSPITAL-A,
with a 1 s quiet period), and one Orthanc (AE title ORTHANC) that knows the node as
its modality ``medledger``. The node's admin enrolls a ``service`` identity for the
PACS, the node's gateway key, allows Orthanc's AE title and links the PatientIDs of
the studies to a ledger patient, as a hospital would.

* Orthanc C-STOREs a study it holds (uploaded through its REST API) to MedLedger; the
  study becomes one ``imaging-study`` record whose instances are those Orthanc holds.
* Orthanc retrieves a study stored in MedLedger by C-MOVE (it is the C-MOVE SCU and
  the C-STORE SCP of the sub-operations); what it receives is what was stored.
* An Orthanc whose AE title the node does not know can neither echo nor store.

Orthanc and dcmtk come from Debian (``make dicom-tools``); without Orthanc, the module
skips.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from .harness import Consortium, Identity, run_cli, running_consortium
from .orthanc import Modality, Orthanc, OrthancError, orthanc_binary, running_orthanc
from .test_dicom_scp import NODE_AE, listener, node_events
from .test_dicom_store import dataset_bytes, make_study, study_records, wait_new_record

pytestmark = pytest.mark.skipif(
    orthanc_binary() is None,
    reason="Orthanc is not installed: run 'make dicom-tools' as root (or apt-get install orthanc)",
)

ORTHANC_AE = "ORTHANC"
NODE_MODALITY = "medledger"
SEAL_TIMEOUT_S = 60.0
STUDY_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
TRAILING_PADDING = 0xFFFCFFFC


class Setup:
    def __init__(self, c: Consortium, orthanc: Orthanc, pacs: Identity, patient: Identity):
        self.c = c
        self.orthanc = orthanc
        self.pacs = pacs
        self.patient = patient
        self.gateway_id = str(listener(c)["gateway_id"])


def admin_cli(c: Consortium, *args: str) -> Any:
    r = run_cli(*args, "--node", c.api, "--as", c.admin_key_file, "--json")
    assert r.code == 0, f"medledger {' '.join(args)}: {r.err}"
    return r.json()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("orthanc")
    with running_consortium(base / "ml", start=False) as c:
        c.init(institutions=4)
        config_file = c.home / "config.json"
        cfg = json.loads(config_file.read_text())
        cfg["dicom"].update(quiet_s=1.0, retry_s=1.0)
        config_file.write_text(json.dumps(cfg))
        c.up()
        pacs_id = c.enroll("orthanc-pacs", "service")
        patient = c.enroll("patient", "patient")
        gateway_id = str(listener(c)["gateway_id"])
        assert (
            admin_cli(c, "identity", "enroll", "--role", "service", "--id", gateway_id)["code"]
            == "OK"
        )
        node = listener(c)
        modality = Modality(NODE_AE, node["host"], int(node["port"]))
        with running_orthanc(
            base / "orthanc", ae_title=ORTHANC_AE, modalities={NODE_MODALITY: modality}
        ) as orthanc:
            # the node knows Orthanc's AE title (and, for C-MOVE, where it listens)
            admin_cli(
                c, "dicom", "allow", ORTHANC_AE, "--identity", pacs_id.id,
                "--host", "127.0.0.1", "--port", str(orthanc.dicom_port),
            )  # fmt: skip
            yield Setup(c, orthanc, pacs_id, patient)


def link(s: Setup, mrn: str) -> None:
    admin_cli(s.c, "patient", "link", "--mrn", mrn, "--patient", s.patient.id)


def read_back(s: Setup, record_id: str, out: Path) -> dict[str, bytes]:
    """SOPInstanceUID -> the file ``medledger record get --out`` extracted."""
    r = run_cli(
        "record", "get", record_id, "--out", out, "--purpose", "patient-access",
        "--node", s.c.api, "--as", s.patient.key_file,
    )  # fmt: skip
    assert r.code == 0, r.err
    files = {}
    for p in sorted(out.rglob("*.dcm")):
        files[str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)] = p.read_bytes()
    return files


def by_sop(paths: list[Path]) -> dict[str, bytes]:
    return {str(pydicom.dcmread(p).SOPInstanceUID): p.read_bytes() for p in paths}


def same_elements(a: bytes, b: bytes) -> list[str]:
    """The elements (tags) whose values differ between two Part 10 files' datasets,
    trailing padding aside; the file meta groups are not compared."""
    da, db = pydicom.dcmread(BytesIO(a)), pydicom.dcmread(BytesIO(b))
    ta = {e.tag for e in da if e.tag != TRAILING_PADDING}
    tb = {e.tag for e in db if e.tag != TRAILING_PADDING}
    diff = [str(t) for t in ta ^ tb]
    diff += [str(t) for t in ta & tb if da[t].value != db[t].value]
    return diff


def trailing_padding_size(rest: bytes, implicit_vr: bool) -> int:
    """The size of a (FFFC,FFFC) element at the start of ``rest`` (-1: not one)."""
    if rest[:4] != b"\xfc\xff\xfc\xff":
        return -1
    if implicit_vr:
        return 8 + int.from_bytes(rest[4:8], "little")
    return 12 + int.from_bytes(rest[8:12], "little")


def assert_dataset_equal_but_padding(ours: bytes, theirs: bytes, what: str) -> None:
    """``ours``'s dataset bytes equal ``theirs``'s, or ``theirs``'s without its trailing
    padding element (dcmtk drops it when it sends); file meta groups aside."""
    a, b = dataset_bytes(ours)[1], dataset_bytes(theirs)[1]
    if a == b:
        return
    assert b.startswith(a), f"{what}: the datasets differ before their end"
    implicit = (
        pydicom.dcmread(BytesIO(theirs)).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    )
    rest = b[len(a) :]
    assert trailing_padding_size(rest, implicit) == len(rest), f"{what}: {rest[:16]!r}..."


def upload_study(s: Setup, paths: list[Path]) -> str:
    """Upload files of one study into Orthanc (REST); return Orthanc's study ID."""
    parents = {s.orthanc.upload(p.read_bytes())["ParentStudy"] for p in paths}
    assert len(parents) == 1, parents
    return parents.pop()


def test_orthanc_echoes_the_node(pacs: Setup) -> None:
    r = pacs.orthanc.echo(NODE_MODALITY)
    assert r.status_code == 200, r.text
    assert any(e["calling_ae"] == ORTHANC_AE for e in node_events(pacs.c, "dicom.echo"))


def test_orthanc_c_store_becomes_one_record(pacs: Setup, tmp_path: Path) -> None:
    s = pacs
    link(s, "MRN-ORTHANC-STORE")
    sent = make_study(tmp_path / "study", "MRN-ORTHANC-STORE", STUDY_FILES)
    study_uid = str(pydicom.dcmread(sent[0]).StudyInstanceUID)
    orthanc_study = upload_study(s, sent)
    assert s.orthanc.study_id(study_uid) == orthanc_study
    held = s.orthanc.instance_files(orthanc_study)
    assert set(held) == set(by_sop(sent))

    known = {r["record_id"] for r in study_records(s)}
    job = s.orthanc.post_json(
        f"/modalities/{NODE_MODALITY}/store",
        {"Resources": [orthanc_study], "Synchronous": True},
    )
    assert job.get("FailedInstancesCount", 0) == 0, job
    assert job["InstancesCount"] == len(sent), job
    rec = wait_new_record(s, known, SEAL_TIMEOUT_S)
    assert rec["creator"] == s.gateway_id
    sealed = [
        e for e in node_events(s.c, "dicom.study_sealed") if e["record_id"] == rec["record_id"]
    ]
    assert sealed and sealed[0]["instances"] == len(sent) and sealed[0]["identity"] == s.pacs.id
    assert sealed[0]["study_uid"] == study_uid

    got = read_back(s, rec["record_id"], tmp_path / "out")
    assert set(got) == set(held)
    for sop, orthanc_file in held.items():
        mine = got[sop]
        # Orthanc holds the uploaded file as it was; when it sends it (dcmtk), the
        # trailing padding (FFFC,FFFC) of CT_small/MR_small is dropped and the rest of
        # the dataset goes over the wire unchanged; the gateway keeps what it received,
        # so our dataset bytes are Orthanc's, minus that one element
        assert_dataset_equal_but_padding(mine, orthanc_file, sop)
        assert same_elements(mine, orthanc_file) == [], sop
        meta_mine = pydicom.dcmread(BytesIO(mine)).file_meta
        meta_theirs = pydicom.dcmread(BytesIO(orthanc_file)).file_meta
        for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"):
            assert meta_mine[kw].value == meta_theirs[kw].value, (sop, kw)
    # and Orthanc's copy is the uploaded file, byte for byte
    assert held == by_sop(sent)


def test_unknown_orthanc_is_refused_and_stores_nothing(pacs: Setup, tmp_path: Path) -> None:
    s = pacs
    node = listener(s.c)
    modality = Modality(NODE_AE, node["host"], int(node["port"]))
    link(s, "MRN-ORTHANC-ROGUE")
    sent = make_study(tmp_path / "study", "MRN-ORTHANC-ROGUE", STUDY_FILES[:1])
    known = {r["record_id"] for r in study_records(s)}
    with running_orthanc(
        tmp_path / "rogue", ae_title="ROGUE_PACS", modalities={NODE_MODALITY: modality}
    ) as rogue:
        r = rogue.echo(NODE_MODALITY)
        assert r.status_code >= 400, r.text
        study = upload_study_to(rogue, sent)
        with pytest.raises(OrthancError):
            rogue.post_json(
                f"/modalities/{NODE_MODALITY}/store", {"Resources": [study], "Synchronous": True}
            )
    rejected = [
        e for e in node_events(s.c, "dicom.association_rejected") if e["calling_ae"] == "ROGUE_PACS"
    ]
    assert rejected and all(e["reason"] == "unknown_calling_ae" for e in rejected)
    time.sleep(2.5)  # two quiet periods: nothing was spooled, nothing is sealed
    spooled = [p for d in ("spool", "sealing") for p in (s.c.home / "dicom" / d).rglob("*.dcm")]
    assert spooled == []
    assert [r for r in study_records(s) if r["record_id"] not in known] == []


def upload_study_to(orthanc: Orthanc, paths: list[Path]) -> str:
    parents = {orthanc.upload(p.read_bytes())["ParentStudy"] for p in paths}
    assert len(parents) == 1
    return parents.pop()


def test_orthanc_retrieves_a_study_by_c_move(pacs: Setup, tmp_path: Path) -> None:
    s = pacs
    link(s, "MRN-ORTHANC-MOVE")
    sent = make_study(tmp_path / "study", "MRN-ORTHANC-MOVE", STUDY_FILES)
    study_uid = str(pydicom.dcmread(sent[0]).StudyInstanceUID)
    known = {r["record_id"] for r in study_records(s)}
    # into MedLedger (not through Orthanc: Orthanc must not hold the study before)
    send_with_pynetdicom(s, sent, calling=ORTHANC_AE)
    rec = wait_new_record(s, known, SEAL_TIMEOUT_S)
    stored = read_back(s, rec["record_id"], tmp_path / "stored")
    assert s.orthanc.study_id(study_uid) is None

    job = s.orthanc.post_json(
        f"/modalities/{NODE_MODALITY}/move",
        {
            "Level": "Study",
            "Resources": [{"StudyInstanceUID": study_uid}],
            "TargetAet": ORTHANC_AE,
            "Synchronous": True,
        },
    )
    assert isinstance(job, dict), job
    orthanc_study = s.orthanc.study_id(study_uid)
    assert orthanc_study is not None, s.orthanc.log_tail()
    received = s.orthanc.instance_files(orthanc_study)
    assert set(received) == set(stored) == set(by_sop(sent))
    for sop, theirs in received.items():
        # the gateway (pynetdicom) sends the dataset bytes it stored, padding and all,
        # and Orthanc keeps what it received: byte for byte after the file meta group
        assert dataset_bytes(theirs)[1] == dataset_bytes(stored[sop])[1], sop
        assert same_elements(theirs, stored[sop]) == [], sop

    # the retrieval is on chain: an access event on the record, for the PACS
    with s.c.client(s.patient) as client:
        events = client.audit(s.patient.id)
    reads = [e for e in events if e["record_id"] == rec["record_id"] and e["action"] == "read"]
    assert any(e["actor"] == s.gateway_id for e in reads), reads


def send_with_pynetdicom(s: Setup, paths: list[Path], calling: str) -> None:
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling)
    for cx in sorted({(str(x.SOPClassUID), str(x.file_meta.TransferSyntaxUID)) for x in datasets}):
        ae.add_requested_context(*cx)
    d = listener(s.c)
    assoc = ae.associate(d["host"], d["port"], ae_title=NODE_AE)
    assert assoc.is_established
    try:
        assert [int(assoc.send_c_store(ds).Status) for ds in datasets] == [0] * len(datasets)
    finally:
        assoc.release()

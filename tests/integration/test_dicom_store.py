"""C-STORE through the node's DICOM gateway, against real callers (dcmtk's storescu and
pynetdicom), into one encrypted, erasure-coded ``imaging-study`` record per study.

One running one-institution consortium for the module, its DICOM section tuned for
tests (a 1 s quiet period, a 1 s retry, a 100 KB instance cap). The admin enrolls a
PACS service and the node's gateway key, allows the PACS's AE titles, and links the
PatientIDs of the studies to a ledger patient; the patient then reads each study back
with ``medledger record get`` and finds every instance as it was sent.

storescu comes from Debian's dcmtk (``make dicom-tools``); without it that test skips.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from .harness import Consortium, cli_json, run_cli, running_consortium
from .test_dicom_scp import NODE_AE, dcmtk_tool, listener, node_events, wait_event

STORESCU = dcmtk_tool("storescu")
needs_storescu = pytest.mark.skipif(
    STORESCU is None,
    reason="dcmtk's storescu is not installed: run 'make dicom-tools' as root "
    "(or 'apt-get install dcmtk')",
)
TEST_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
MAX_INSTANCE_BYTES = 100_000
SEAL_TIMEOUT_S = 30.0
TRAILING_PADDING = 0xFFFCFFFC


class Setup:
    def __init__(self, c: Consortium) -> None:
        self.c = c
        self.pacs = c.enroll("pacs", "service")
        self.patient = c.enroll("patient", "patient")
        self.gateway_id = str(listener(c)["gateway_id"])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_consortium(tmp_path_factory.mktemp("dicom-store"), start=False) as c:
        c.init()
        config_file = c.home / "config.json"
        cfg = json.loads(config_file.read_text())
        cfg["dicom"].update(quiet_s=1.0, retry_s=1.0, max_instance_bytes=MAX_INSTANCE_BYTES)
        config_file.write_text(json.dumps(cfg))
        c.up()
        s = Setup(c)

        # allowing an AE title before the gateway is enrolled prints how to enroll it
        for title in ("CT_SCANNER_1", "PACS_1"):
            r = run_cli(
                "dicom", "allow", title, "--identity", s.pacs.id,
                "--node", c.api, "--as", c.admin_key_file,
            )  # fmt: skip
            assert r.code == 0, r.err
        assert "not an enrolled service" in r.err and s.gateway_id in r.err
        enrolled = cli_json(
            "identity", "enroll", "--role", "service", "--id", s.gateway_id,
            "--node", c.api, "--as", c.admin_key_file,
        )  # fmt: skip
        assert enrolled["code"] == "OK", enrolled
        doc = cli_json("dicom", "ls", "--node", c.api, "--as", c.admin_key_file)
        assert doc["gateway_id"] == s.gateway_id and doc["gateway_enrolled"] is True
        yield s


def link(s: Setup, mrn: str) -> dict[str, Any]:
    doc: dict[str, Any] = cli_json(
        "patient", "link", "--mrn", mrn, "--patient", s.patient.id,
        "--node", s.c.api, "--as", s.c.admin_key_file,
    )  # fmt: skip
    return doc


def make_study(folder: Path, patient_id: str, names: tuple[str, ...] = TEST_FILES) -> list[Path]:
    """Copies of pydicom's test files as one study of ``patient_id``, with new UIDs."""
    folder.mkdir(parents=True)
    study_uid = generate_uid()
    paths = []
    for name in names:
        src = get_testdata_file(name)
        assert src is not None, name
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = patient_id
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def study_records(s: Any) -> list[dict[str, Any]]:
    """The patient's imaging-study records (``s``: a setup with ``c`` and ``patient``)."""
    doc = cli_json(
        "record", "ls", "--patient", s.patient.id, "--node", s.c.api,
        "--as", s.patient.key_file,
    )  # fmt: skip
    return [r for r in doc["records"] if r["type"] == "imaging-study"]


def wait_new_record(s: Any, known: set[str], timeout: float = SEAL_TIMEOUT_S) -> dict[str, Any]:
    """The one study record not in ``known`` once it appears (the study was sealed)."""
    deadline = time.monotonic() + timeout
    while True:
        new = [r for r in study_records(s) if r["record_id"] not in known]
        if new:
            assert len(new) == 1, new
            return new[0]
        assert time.monotonic() < deadline, "no study record:\n" + s.c.log_tails(40)
        time.sleep(0.3)


def read_back(s: Setup, record_id: str, out: Path) -> dict[str, bytes]:
    r = run_cli(
        "record", "get", record_id, "--out", out, "--purpose", "patient-access",
        "--node", s.c.api, "--as", s.patient.key_file,
    )  # fmt: skip
    assert r.code == 0, r.err
    return {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def dataset_bytes(part10: bytes) -> tuple[Dataset, bytes]:
    """The dataset of a Part 10 file, and its encoded bytes after the file meta."""
    from io import BytesIO

    fh = BytesIO(part10)
    ds = pydicom.dcmread(fh)
    fh.seek(0)
    pydicom.filereader.read_preamble(fh, False)
    pydicom.filereader._read_file_meta_info(fh)
    return ds, part10[fh.tell() :]


def assert_same_instances(sent: list[Path], got: dict[str, bytes]) -> None:
    assert sorted(got) == sorted(p.name for p in sent)
    for path in sent:
        want = pydicom.dcmread(path)
        have, _ = dataset_bytes(got[path.name])
        assert have.SOPInstanceUID == want.SOPInstanceUID
        # every element (the file meta is the gateway's); storescu drops the trailing
        # padding (FFFC,FFFC) of CT_small.dcm when it sends, pynetdicom keeps it
        tags = {e.tag for e in want if e.tag != TRAILING_PADDING}
        assert {e.tag for e in have if e.tag != TRAILING_PADDING} == tags, path.name
        assert [t for t in tags if have[t].value != want[t].value] == [], path.name
        if "PixelData" in want:
            assert have.PixelData == want.PixelData
        assert have.file_meta.MediaStorageSOPInstanceUID == want.SOPInstanceUID


def spool_files(s: Setup) -> list[Path]:
    root = s.c.home / "dicom"
    return [p for d in ("spool", "sealing") for p in (root / d).rglob("*.dcm")]


def scu_store(s: Setup, datasets: list[Dataset], calling: str = "PACS_1") -> list[int] | None:
    """Send ``datasets`` with pynetdicom; their statuses, None if refused at association."""
    ae = AE(ae_title=calling)
    # each dataset in its own transfer syntax: sent as encoded, not converted
    for cx in sorted({(str(x.SOPClassUID), str(x.file_meta.TransferSyntaxUID)) for x in datasets}):
        ae.add_requested_context(*cx)
    d = listener(s.c)
    assoc = ae.associate(d["host"], d["port"], ae_title=NODE_AE)
    if not assoc.is_established:
        return None
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def own_record_write(s: Setup, record_id: str) -> dict[str, Any]:
    with s.c.client(s.patient) as client:
        events = client.audit(s.patient.id)
    (ev,) = [e for e in events if e["action"] == "write" and e["record_id"] == record_id]
    return ev


@needs_storescu
def test_storescu_study_becomes_one_record(store: Setup, tmp_path: Path) -> None:
    s = store
    assert link(s, "MRN-DCMTK")["created"] is True
    sent = make_study(tmp_path / "study", "MRN-DCMTK")
    d = listener(s.c)
    known = {r["record_id"] for r in study_records(s)}
    assert STORESCU is not None
    r = subprocess.run(
        [STORESCU, "-aet", "CT_SCANNER_1", "-aec", NODE_AE, "-to", "20",
         d["host"], str(d["port"]), *map(str, sent)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    rec = wait_new_record(s, known)
    assert rec["creator"] == s.gateway_id and rec["institution"] == "hospital-a"
    got = read_back(s, rec["record_id"], tmp_path / "out")
    assert_same_instances(sent, got)
    ev = own_record_write(s, rec["record_id"])
    assert ev["actor"] == s.gateway_id and f"on_behalf_of={s.pacs.id}" in ev["detail"]
    wait_event(s.c, "dicom.study_sealed", record_id=rec["record_id"], instances=len(sent))
    assert spool_files(s) == []


def test_pynetdicom_study_exact_bytes_and_late_instance(store: Setup, tmp_path: Path) -> None:
    s = store
    link(s, "MRN-PYNET")
    sent = make_study(tmp_path / "study", "MRN-PYNET")
    known = {r["record_id"] for r in study_records(s)}
    datasets = [pydicom.dcmread(p) for p in sent]
    assert scu_store(s, datasets[:2]) == [0, 0]
    first = wait_new_record(s, known)
    got = read_back(s, first["record_id"], tmp_path / "out1")
    assert_same_instances(sent[:2], got)
    for path in sent[:2]:
        # the gateway keeps the dataset exactly as it came over the wire
        _, want = dataset_bytes(path.read_bytes())
        assert dataset_bytes(got[path.name])[1] == want

    # an instance of the same study after it was sealed: a part of the first record
    assert scu_store(s, datasets[2:]) == [0]
    second = wait_new_record(s, known | {first["record_id"]})
    assert second["part_of"] == first["record_id"] and first["part_of"] == ""
    assert_same_instances(sent[2:], read_back(s, second["record_id"], tmp_path / "out2"))
    assert f"part_of={first['record_id']}" in own_record_write(s, second["record_id"])["detail"]


def test_unlinked_patient_is_filed_under_a_pseudonym_then_merged(
    store: Setup, tmp_path: Path
) -> None:
    s = store
    sent = make_study(tmp_path / "study", "MRN-LATER", TEST_FILES[:1])
    known = {r["record_id"] for r in study_records(s)}
    assert scu_store(s, [pydicom.dcmread(sent[0])]) == [0]
    study_uid = str(pydicom.dcmread(sent[0]).StudyInstanceUID)
    sealed = wait_event(s.c, "dicom.study_sealed", study_uid=study_uid)
    assert sealed["pseudonymous"] is True
    assert spool_files(s) == []
    assert "MRN-LATER" not in (s.c.home / "node.log").read_text()  # no PatientID in logs
    links = cli_json("patient", "ls", "--node", s.c.api, "--as", s.c.admin_key_file, "--json")
    (entry,) = [x for x in links["links"] if x["mrn"] == "MRN-LATER"]
    pseudonym = entry["patient"]
    assert entry["pseudonymous"] is True and pseudonym != s.patient.id
    with s.c.admin() as admin:
        assert [r["record_id"] for r in admin.list_records(pseudonym)] == [sealed["record_id"]]

    doc = link(s, "MRN-LATER")  # links the MRN and merges the pseudonym's records
    assert doc["merged_records"] == 1 and doc["replaced_pseudonym"] == pseudonym
    rec = wait_new_record(s, known)
    assert rec["record_id"] == sealed["record_id"] and rec["patient"] == s.patient.id
    assert_same_instances(sent, read_back(s, rec["record_id"], tmp_path / "out"))
    with s.c.admin() as admin:
        assert admin.list_records(pseudonym) == []
        assert admin.identity(pseudonym)["status"] == "suspended"
    with s.c.client(s.patient) as patient:
        merges = [e for e in patient.audit(s.patient.id) if e["action"] == "merge"]
    assert [e["record_id"] for e in merges] == [rec["record_id"]]
    # linking again is idempotent and merges nothing more
    assert link(s, "MRN-LATER")["merged_records"] == 0


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, on building the bad datasets
def test_hostile_instances_are_refused_and_stored_nowhere(store: Setup, tmp_path: Path) -> None:
    s = store
    link(s, "MRN-HOSTILE")
    (path,) = make_study(tmp_path / "study", "MRN-HOSTILE", TEST_FILES[:1])
    known = {r["record_id"] for r in study_records(s)}

    no_study = pydicom.dcmread(path)
    del no_study.StudyInstanceUID
    bad_uid = pydicom.dcmread(path)
    bad_uid.StudyInstanceUID = "1.2.840.x/../.."
    bad_uid.SOPInstanceUID = generate_uid()
    no_patient = pydicom.dcmread(path)
    del no_patient.PatientID
    no_patient.SOPInstanceUID = generate_uid()
    too_big = pydicom.dcmread(path)
    too_big.SOPInstanceUID = generate_uid()
    too_big.ImageComments = "x" * (MAX_INSTANCE_BYTES + 2)
    assert scu_store(s, [no_study, bad_uid, no_patient, too_big]) == [
        0xA900,
        0xA900,
        0xA900,
        0xA700,
    ]
    reasons = [e["reason"] for e in node_events(s.c, "dicom.store_refused")]
    for reason in ("no_study_uid", "bad_study_uid", "bad_patient_id", "too_large"):
        assert reason in reasons

    # an unknown calling AE title is still refused at association time
    assert scu_store(s, [pydicom.dcmread(path)], calling="UNKNOWN_AE") is None
    wait_event(s.c, "dicom.association_rejected", calling_ae="UNKNOWN_AE")

    log_text = (s.c.home / "node.log").read_text()
    assert "MRN-HOSTILE" not in log_text and "1.2.840.x" not in log_text  # no values logged
    time.sleep(2.5)  # two quiet periods: nothing to seal
    assert spool_files(s) == []
    assert [r for r in study_records(s) if r["record_id"] not in known] == []

"""DICOM query/retrieve through the node's gateway against real peers: dcmtk's findscu,
movescu and storescp, and a pynetdicom C-GET SCU.

One running two-institution consortium for the module (hospital-a and hospital-b, a
node each), the DICOM sections tuned for tests (1 s quiet period and retry). At
hospital-a, the admin enrolls a PACS (the caller) and a viewer (a C-MOVE destination,
a dcmtk storescp the test starts on a free port), enrolls the gateway key, and links
the study's PatientID to a ledger patient; storescu then sends one study of three
instances (three series). At hospital-b, a service of its own is allowed at its node.

Then: findscu finds the study (STUDY and SERIES level, by PatientID and by a StudyDate
range) at hospital-a, hospital-b's AE sees nothing at its own node and is refused at
hospital-a; movescu moves the study to storescp, whose files hold each instance's
dataset byte for byte as stored, and the read is on the patient's audit trail (actor:
the gateway, on behalf of the PACS); C-GET returns the same bytes; a move to an
unknown destination fails with 0xA801 and reads nothing; hostile identifiers fail.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from .harness import Consortium, assert_cli_error, cli_json, run_cli, running_consortium
from .test_dicom_scp import dcmtk_tool, node_events, wait_event
from .test_dicom_store import dataset_bytes

FINDSCU = dcmtk_tool("findscu")
MOVESCU = dcmtk_tool("movescu")
STORESCP = dcmtk_tool("storescp")
STORESCU = dcmtk_tool("storescu")
pytestmark = pytest.mark.skipif(
    None in (FINDSCU, MOVESCU, STORESCP, STORESCU),
    reason="dcmtk is not installed: run 'make dicom-tools' as root (or 'apt-get install dcmtk')",
)
NODE_AE = "HOSPITAL-A"
OTHER_NODE_AE = "HOSPITAL-B"
TEST_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
MRN = "MRN-QR-1"
STUDY_DATE = "20240315"
SEAL_TIMEOUT_S = 40.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Setup:
    def __init__(self, c: Consortium, tmp: Path) -> None:
        self.c = c
        self.tmp = tmp
        self.a = c.info["institutions"][0]
        self.b = c.info["institutions"][1]
        self.pacs = c.enroll("pacs", "service")
        self.viewer = c.enroll("viewer", "service")
        self.patient = c.enroll("patient", "patient")
        self.gateway_id = str(self.a["dicom"]["gateway_id"])
        self.store_port = free_port()
        self.sent: list[Path] = []
        self.study_uid = ""
        self.record_id = ""
        self.stored: dict[str, bytes] = {}  # SOP Instance UID -> dataset bytes as stored


def admin_cli(inst: dict[str, Any], *args: str | Path) -> Any:
    return cli_json(*args, "--node", inst["api"], "--as", inst["admin_key"])


def make_study(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    study_uid = generate_uid()
    paths = []
    for name in TEST_FILES:
        src = get_testdata_file(name)
        assert src is not None, name
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = MRN
        ds.StudyDate = STUDY_DATE
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def study_records(s: Setup) -> list[dict[str, Any]]:
    with s.c.client(s.patient) as client:
        return [r for r in client.list_records(s.patient.id) if r["type"] == "imaging-study"]


@pytest.fixture(scope="module")
def qr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("dicom-qr")
    with running_consortium(tmp, start=False) as c:
        c.init(institutions=2)
        for home in c.homes():
            cfg_file = home / "config.json"
            cfg = json.loads(cfg_file.read_text())
            cfg["dicom"].update(quiet_s=1.0, retry_s=1.0)
            cfg_file.write_text(json.dumps(cfg))
        c.up()
        s = Setup(c, tmp)
        assert (
            admin_cli(s.a, "identity", "enroll", "--role", "service", "--id", s.gateway_id)["code"]
            == "OK"
        )
        admin_cli(s.a, "dicom", "allow", "PACS_QR", "--identity", s.pacs.id)
        doc = admin_cli(
            s.a, "dicom", "allow", "STORESCP", "--identity", s.viewer.id,
            "--host", "127.0.0.1", "--port", str(s.store_port),
        )  # fmt: skip
        assert (doc["host"], doc["port"]) == ("127.0.0.1", s.store_port)
        admin_cli(s.a, "patient", "link", "--mrn", MRN, "--patient", s.patient.id)
        # hospital-b: a service of its own, allowed at its own node
        other = c.new_key("other-pacs")
        assert (
            admin_cli(s.b, "identity", "enroll", "--role", "service", "--id", other.id)["code"]
            == "OK"
        )
        admin_cli(s.b, "dicom", "allow", "OTHER_PACS", "--identity", other.id)

        s.sent = make_study(tmp / "study")
        s.study_uid = str(pydicom.dcmread(s.sent[0]).StudyInstanceUID)
        d = s.a["dicom"]
        assert STORESCU is not None
        r = subprocess.run(
            [STORESCU, "-aet", "PACS_QR", "-aec", NODE_AE, "-to", "20",
             d["host"], str(d["port"]), *map(str, s.sent)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        deadline = time.monotonic() + SEAL_TIMEOUT_S
        while not (records := study_records(s)):
            assert time.monotonic() < deadline, "no study record:\n" + c.log_tails(40)
            time.sleep(0.3)
        (rec,) = records
        s.record_id = rec["record_id"]
        wait_event(c, "dicom.study_sealed", record_id=s.record_id)
        # what the ledger holds, read back by the patient
        out = tmp / "readback"
        r2 = run_cli(
            "record", "get", s.record_id, "--out", out, "--purpose", "patient-access",
            "--node", c.api, "--as", s.patient.key_file,
        )  # fmt: skip
        assert r2.code == 0, r2.err
        for p in out.rglob("*.dcm"):
            ds, raw = dataset_bytes(p.read_bytes())
            s.stored[str(ds.SOPInstanceUID)] = raw
        assert len(s.stored) == len(TEST_FILES)
        yield s


# ---- helpers -------------------------------------------------------------------------------


def findscu(
    s: Setup, cwd: Path, *keys: str, calling: str = "PACS_QR", inst: int = 0
) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
    """findscu (Study Root) with ``-k`` keys; the response identifiers it extracted."""
    assert FINDSCU is not None
    cwd.mkdir(parents=True, exist_ok=True)
    d = (s.a, s.b)[inst]["dicom"]
    called = (NODE_AE, OTHER_NODE_AE)[inst]
    args = [FINDSCU, "-S", "-X", "-aet", calling, "-aec", called, "-to", "20"]
    for k in keys:
        args += ["-k", k]
    r = subprocess.run(
        [*args, d["host"], str(d["port"])], capture_output=True, text=True, cwd=cwd, timeout=60
    )
    found = [pydicom.dcmread(p) for p in sorted(cwd.glob("rsp*.dcm"))]
    return r, found


def audit_reads(s: Setup) -> list[dict[str, Any]]:
    with s.c.client(s.patient) as client:
        events = client.audit(s.patient.id)
    return [e for e in events if e["action"] == "read" and e["record_id"] == s.record_id]


def reads_by_gateway(s: Setup) -> list[dict[str, Any]]:
    return [e for e in audit_reads(s) if e["actor"] == s.gateway_id]


# ---- C-FIND ----------------------------------------------------------------------------------


def test_findscu_sees_the_study(qr: Setup, tmp_path: Path) -> None:
    s = qr
    r, found = findscu(
        s, tmp_path / "study",
        "QueryRetrieveLevel=STUDY", f"PatientID={MRN}", "StudyInstanceUID",
        "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries", "ModalitiesInStudy",
        "PatientName", "StudyDate",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    (study,) = found
    assert study.StudyInstanceUID == s.study_uid
    assert int(study.NumberOfStudyRelatedInstances) == 3
    assert int(study.NumberOfStudyRelatedSeries) == 3
    assert "CT" in study.ModalitiesInStudy and "MR" in study.ModalitiesInStudy
    assert study.StudyDate == STUDY_DATE and study.PatientID == MRN

    _, by_date = findscu(
        s, tmp_path / "date",
        "QueryRetrieveLevel=STUDY", "StudyDate=20240101-20241231", "StudyInstanceUID",
    )  # fmt: skip
    assert [x.StudyInstanceUID for x in by_date] == [s.study_uid]
    _, none = findscu(
        s, tmp_path / "none",
        "QueryRetrieveLevel=STUDY", "StudyDate=20100101-20101231", "StudyInstanceUID",
    )  # fmt: skip
    assert none == []

    _, series = findscu(
        s, tmp_path / "series",
        "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={s.study_uid}", "SeriesInstanceUID",
        "Modality", "NumberOfSeriesRelatedInstances",
    )  # fmt: skip
    want = sorted(str(pydicom.dcmread(p).SeriesInstanceUID) for p in s.sent)
    assert sorted(str(x.SeriesInstanceUID) for x in series) == want
    assert all(int(x.NumberOfSeriesRelatedInstances) == 1 for x in series)
    event = wait_event(s.c, "dicom.find", query_level="SERIES")
    assert MRN not in json.dumps(event)  # keys, never values, in the log


def test_other_institution_sees_nothing(qr: Setup, tmp_path: Path) -> None:
    s = qr
    # hospital-b's own node indexes only what it stored: nothing
    r, found = findscu(
        s, tmp_path / "b", "QueryRetrieveLevel=STUDY", "PatientID=*", "StudyInstanceUID",
        calling="OTHER_PACS", inst=1,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert found == []
    # and hospital-a refuses its AE title at association time
    r, found = findscu(
        s, tmp_path / "a", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", calling="OTHER_PACS"
    )
    assert found == [] and r.returncode != 0
    wait_event(s.c, "dicom.association_rejected", calling_ae="OTHER_PACS")


def find_status(s: Setup, identifier: Dataset) -> list[int]:
    ae = AE(ae_title="PACS_QR")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    d = s.a["dicom"]
    assoc = ae.associate(d["host"], d["port"], ae_title=NODE_AE)
    assert assoc.is_established
    try:
        return [
            int(st.Status)
            for st, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
            if st
        ]
    finally:
        assoc.release()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hostile_find_identifiers_fail(qr: Setup) -> None:
    s = qr
    no_level = Dataset()
    no_level.StudyInstanceUID = ""
    assert find_status(s, no_level) == [0xA900]
    patient_level = Dataset()  # PATIENT is not a Study Root level
    patient_level.QueryRetrieveLevel = "PATIENT"
    patient_level.PatientID = ""
    assert find_status(s, patient_level) == [0xA900]
    huge = Dataset()
    huge.QueryRetrieveLevel = "STUDY"
    huge.PatientID = "A" * 2000
    assert find_status(s, huge) == [0xA900]
    injection = Dataset()
    injection.QueryRetrieveLevel = "STUDY"
    injection.PatientID = "' OR '1'='1"
    injection.StudyInstanceUID = ""
    assert find_status(s, injection) == [0x0000]  # no match, and no error
    reasons = {e["reason"] for e in node_events(s.c, "dicom.query_refused")}
    assert {"unsupported_level", "bad_query"} <= reasons


# ---- C-MOVE ----------------------------------------------------------------------------------


def movescu(s: Setup, destination: str, *keys: str) -> subprocess.CompletedProcess[str]:
    assert MOVESCU is not None
    d = s.a["dicom"]
    args = [MOVESCU, "-S", "-aet", "PACS_QR", "-aec", NODE_AE, "-aem", destination, "-to", "30"]
    for k in keys:
        args += ["-k", k]
    return subprocess.run(
        [*args, d["host"], str(d["port"])], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def storescp(qr: Setup, tmp_path: Path) -> Iterator[Path]:
    assert STORESCP is not None
    out = tmp_path / "received"
    out.mkdir()
    # +B: the datasets are written bit-preserving, as they came over the wire
    proc = subprocess.Popen(
        [STORESCP, "-aet", "STORESCP", "+B", "-od", str(out), str(qr.store_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", qr.store_port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)
        yield out
    finally:
        proc.terminate()
        proc.wait(10)


def test_movescu_sends_the_stored_bytes_and_is_audited(qr: Setup, storescp: Path) -> None:
    s = qr
    before = len(reads_by_gateway(s))
    r = movescu(s, "STORESCP", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={s.study_uid}")
    assert r.returncode == 0, r.stdout + r.stderr
    received = [p for p in storescp.iterdir() if p.is_file()]
    assert len(received) == len(TEST_FILES), r.stderr
    for path in received:
        ds, raw = dataset_bytes(path.read_bytes())
        assert raw == s.stored[str(ds.SOPInstanceUID)], path.name  # byte for byte
    # one committed read of the record, by the gateway on behalf of the PACS
    reads = reads_by_gateway(s)
    assert len(reads) == before + 1
    assert f"on_behalf_of={s.pacs.id}" in reads[-1]["detail"]
    event = wait_event(s.c, "dicom.retrieved", service="C-MOVE", destination="STORESCP")
    assert event["instances"] == 3 and event["records"] == 1


def test_move_one_series(qr: Setup, storescp: Path) -> None:
    s = qr
    ct = pydicom.dcmread(s.sent[0])
    r = movescu(
        s, "STORESCP", "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={s.study_uid}", f"SeriesInstanceUID={ct.SeriesInstanceUID}",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    (received,) = [p for p in storescp.iterdir() if p.is_file()]
    ds, raw = dataset_bytes(received.read_bytes())
    assert ds.SOPInstanceUID == ct.SOPInstanceUID and raw == s.stored[str(ct.SOPInstanceUID)]


def move_status(s: Setup, destination: str, level: str = "STUDY") -> int:
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelMove,
    )

    ae = AE(ae_title="PACS_QR")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    d = s.a["dicom"]
    assoc = ae.associate(d["host"], d["port"], ae_title=NODE_AE)
    assert assoc.is_established
    ident = Dataset()
    if level:
        ident.QueryRetrieveLevel = level
    ident.StudyInstanceUID = s.study_uid
    try:
        statuses = [
            int(st.Status)
            for st, _ in assoc.send_c_move(
                ident, destination, StudyRootQueryRetrieveInformationModelMove
            )
            if st
        ]
    finally:
        assoc.release()
    return statuses[-1]


def test_move_to_unknown_destination_reads_nothing(qr: Setup) -> None:
    s = qr
    before = len(audit_reads(s))
    assert move_status(s, "NOWHERE") == 0xA801
    # an allowed AE title without an address is no destination either
    assert move_status(s, "PACS_QR") == 0xA801
    ev = wait_event(s.c, "dicom.move_refused", destination="NOWHERE")
    assert ev["reason"] == "unknown_destination"
    # a malformed identifier: a failure (pynetdicom's handler-failure status), no read
    for level in ("", "FRAME"):
        status = move_status(s, "STORESCP", level)
        assert 0xC000 <= status <= 0xCFFF, hex(status)
    ev = wait_event(s.c, "dicom.query_refused", service="C-MOVE")
    assert ev["reason"] == "unsupported_level"
    assert len(audit_reads(s)) == before


# ---- C-GET -----------------------------------------------------------------------------------


def test_c_get_returns_the_stored_bytes(qr: Setup) -> None:
    s = qr
    got: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:
        raw = event.request.DataSet.getvalue()
        ds = pydicom.dcmread(BytesIO(raw), force=True, stop_before_pixels=True)
        got[str(ds.SOPInstanceUID)] = raw
        return 0x0000

    ae = AE(ae_title="PACS_QR")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for p in s.sent:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        roles.append(build_role(ds.SOPClassUID, scp_role=True))
    d = s.a["dicom"]
    assoc = ae.associate(
        d["host"], d["port"], ae_title=NODE_AE, ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    assert assoc.is_established
    before = len(reads_by_gateway(s))
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = s.study_uid
    try:
        statuses = [
            int(st.Status)
            for st, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)
            if st
        ]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000, [hex(x) for x in statuses]
    assert got == s.stored  # every instance, byte for byte
    reads = reads_by_gateway(s)
    assert len(reads) == before + 1 and f"on_behalf_of={s.pacs.id}" in reads[-1]["detail"]


def test_bad_destination_addresses_are_refused(qr: Setup) -> None:
    s = qr
    for host, port in (("bad host", "104"), ("127.0.0.1", "70000"), ("x;rm -rf", "104")):
        r = run_cli(
            "dicom", "allow", "BADDEST", "--identity", s.viewer.id, "--host", host,
            "--port", port, "--node", s.a["api"], "--as", s.a["admin_key"],
        )  # fmt: skip
        assert_cli_error(r, "BAD_ADDRESS")
    doc = admin_cli(s.a, "dicom", "ls")
    assert "BADDEST" not in {e["ae_title"] for e in doc["allowed"]}
    (dest,) = [e for e in doc["allowed"] if e["ae_title"] == "STORESCP"]
    assert (dest["host"], dest["port"]) == ("127.0.0.1", s.store_port)


def test_reindex_indexes_studies_stored_with_record_put(qr: Setup, tmp_path: Path) -> None:
    s = qr
    folder = tmp_path / "put"
    sent = make_study(folder)
    study_uid = str(pydicom.dcmread(sent[0]).StudyInstanceUID)
    stored = cli_json(
        "record", "put", folder, "--patient", s.patient.id,
        "--node", s.a["api"], "--as", s.pacs.key_file,
    )  # fmt: skip
    keys = ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}")
    _, found = findscu(s, tmp_path / "before", *keys)
    assert found == []  # stored without the gateway: not in the index
    r = run_cli("dicom", "reindex", "--node", s.a["api"], "--as", s.pacs.key_file)
    assert_cli_error(r, "NOT_AUTHORIZED")

    report = admin_cli(s.a, "dicom", "reindex")
    assert (report["indexed"], report["instances"], report["failed"]) == (1, len(sent), 0)
    assert report["already"] >= 1  # the studies the gateway stored itself
    _, found = findscu(s, tmp_path / "after", *keys)
    assert [str(x.StudyInstanceUID) for x in found] == [study_uid]
    # the read it took is on the patient's trail: the gateway, purpose audit
    with s.c.client(s.patient) as client:
        events = client.audit(s.patient.id)
    (ev,) = [e for e in events if e["action"] == "read" and e["record_id"] == stored["record_id"]]
    assert ev["actor"] == s.gateway_id and "purpose=audit" in ev["detail"]
    assert admin_cli(s.a, "dicom", "reindex")["indexed"] == 0

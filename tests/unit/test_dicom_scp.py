"""The DICOM SCP over loopback with pynetdicom as the caller: who gets in, and C-ECHO.

The SCP is real (pynetdicom, a TCP port on 127.0.0.1); its authorizer here is a plain
function, so the refusals that need no ledger (and the fail-closed path) are shown
without a node. The ledger side runs in tests/integration/test_dicom_scp.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from structlog.testing import capture_logs

from medledger.dicom.scp import DicomSCP, Verdict

NODE_AE = "HOSPITAL-A"
RULES = {
    "CT_1": Verdict(True, "allowed", "mlservice"),
    "SUSPENDED": Verdict(False, "identity_suspended", "mlgone"),
    "BUSY": Verdict(False, "node_busy", "mlbusy", transient=True),
}


def authorize(calling_ae: str) -> Verdict:
    if calling_ae == "EXPLODES":
        raise RuntimeError("the authorizer failed")
    return RULES.get(calling_ae, Verdict(False, "unknown_calling_ae"))


@pytest.fixture
def scp() -> Iterator[DicomSCP]:
    server = DicomSCP("127.0.0.1", 0, NODE_AE, authorize)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def associate(scp: DicomSCP, calling: str, called: str = NODE_AE) -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = 10
    return ae.associate("127.0.0.1", scp.bound_port, ae_title=called)


def rejection(assoc: Association) -> tuple[int, int, int]:
    assert assoc.is_rejected and not assoc.is_established
    rj: Any = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


def test_an_allowed_caller_echoes(scp: DicomSCP) -> None:
    with capture_logs() as logs:
        assoc = associate(scp, "CT_1")
        assert assoc.is_established
        status = assoc.send_c_echo()
        assert status.Status == 0x0000
        assoc.release()
    events = {e["event"]: e for e in logs}
    assert events["dicom.association_accepted"]["identity"] == "mlservice"
    assert events["dicom.echo"] == {
        "event": "dicom.echo",
        "log_level": "info",
        "calling_ae": "CT_1",
        "identity": "mlservice",
    }


@pytest.mark.parametrize(
    ("calling", "called", "expected", "reason"),
    [
        ("NOBODY", NODE_AE, (1, 1, 3), "unknown_calling_ae"),
        ("SUSPENDED", NODE_AE, (1, 1, 3), "identity_suspended"),
        ("CT_1", "SOMEONE-ELSE", (1, 1, 7), "called_ae_mismatch"),
        ("BUSY", NODE_AE, (2, 3, 1), "node_busy"),
        ("EXPLODES", NODE_AE, (2, 3, 1), "authorize_failed"),  # fails closed
    ],
)
def test_refused_callers(
    scp: DicomSCP, calling: str, called: str, expected: tuple[int, int, int], reason: str
) -> None:
    with capture_logs() as logs:
        assoc = associate(scp, calling, called)
        assert rejection(assoc) == expected
    rejected = [e for e in logs if e["event"] == "dicom.association_rejected"]
    assert len(rejected) == 1, logs
    assert rejected[0]["reason"] == reason and rejected[0]["calling_ae"] == calling
    assert not [e for e in logs if e["event"] in ("dicom.association_accepted", "dicom.echo")]


def test_the_scp_keeps_serving_after_refusals_and_stops_cleanly(scp: DicomSCP) -> None:
    for _ in range(3):
        assert associate(scp, "NOBODY").is_rejected
    assoc = associate(scp, "CT_1")
    assert assoc.is_established
    # stopping aborts an open association and frees the port
    port = scp.bound_port
    scp.stop()
    assoc.release()
    again = DicomSCP("127.0.0.1", port, NODE_AE, authorize)
    again.start()
    try:
        echo = associate(again, "CT_1")
        assert echo.is_established and echo.send_c_echo().Status == 0
        echo.release()
    finally:
        again.stop()


def test_a_port_in_use_is_a_clear_error(scp: DicomSCP) -> None:
    other = DicomSCP("127.0.0.1", scp.bound_port, NODE_AE, authorize)
    with pytest.raises(Exception) as exc:
        other.start()
    assert getattr(exc.value, "code", None) == "DICOM_LISTEN_FAILED"


# ---- query/retrieve helpers and C-MOVE destinations --------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, on the lower-case level
def test_parse_identifier_levels_and_values() -> None:
    from pydicom.dataset import Dataset

    from medledger.dicom.scp import BadIdentifier, parse_identifier

    study_root = "1.2.840.10008.5.1.4.1.2.2.1"
    patient_root = "1.2.840.10008.5.1.4.1.2.1.1"
    ds = Dataset()
    ds.QueryRetrieveLevel = "study"
    ds.PatientID = "MRN-1 "
    ds.StudyInstanceUID = ["1.2.3", "1.2.4"]
    ds.PatientName = "Doe^*"
    ds.StudyDate = "20200101-20201231"
    ds.ReferencedStudySequence = []  # sequences are not matched
    level, match = parse_identifier(ds, study_root)
    assert level == "STUDY"
    assert match == {
        "PatientID": "MRN-1",
        "StudyInstanceUID": "1.2.3\\1.2.4",
        "PatientName": "Doe^*",
        "StudyDate": "20200101-20201231",
    }
    ds.QueryRetrieveLevel = "PATIENT"
    assert parse_identifier(ds, patient_root)[0] == "PATIENT"
    for level_value in ("PATIENT", "FRAME", ""):
        ds.QueryRetrieveLevel = level_value
        with pytest.raises(BadIdentifier) as exc:
            parse_identifier(ds, study_root)
        assert exc.value.status == 0xA900 and exc.value.reason == "unsupported_level"
    del ds.QueryRetrieveLevel
    with pytest.raises(BadIdentifier):
        parse_identifier(ds, study_root)


def test_find_response_fills_the_requested_keys() -> None:
    from pydicom.dataset import Dataset

    from medledger.dicom.scp import find_response

    ask = Dataset()
    ask.QueryRetrieveLevel = "STUDY"
    ask.StudyInstanceUID = ""
    ask.ModalitiesInStudy = ""
    ask.PatientName = ""
    ask.NumberOfStudyRelatedInstances = None
    ask.RetrieveAETitle = ""
    ask.add_new(0x00280010, "US", None)  # Rows
    ask.StationName = ""  # not indexed: returned empty
    row = {
        "StudyInstanceUID": "1.2.3",
        "ModalitiesInStudy": "CT\\MR",
        "PatientName": "Müller^Jörg",
        "NumberOfStudyRelatedInstances": "3",
        "Rows": "128",
        "PatientID": "never asked",
    }
    rsp = find_response(ask, row, "HOSPITAL-A")
    assert rsp.StudyInstanceUID == "1.2.3"
    assert list(rsp.ModalitiesInStudy) == ["CT", "MR"]
    assert str(rsp.PatientName) == "Müller^Jörg" and rsp.SpecificCharacterSet == "ISO_IR 192"
    assert int(rsp.NumberOfStudyRelatedInstances) == 3 and rsp.Rows == 128
    assert rsp.RetrieveAETitle == "HOSPITAL-A" and rsp.QueryRetrieveLevel == "STUDY"
    assert rsp.StationName in (None, "") and "PatientID" not in rsp


def test_move_contexts_keep_each_stored_transfer_syntax() -> None:
    from medledger.dicom.index import IndexedInstance
    from medledger.dicom.scp import MAX_MOVE_CONTEXTS, move_contexts

    def inst(sop: str, cls: str, ts: str) -> IndexedInstance:
        return IndexedInstance("r", "p", "1.2", "1.2.1", sop, cls, ts, f"{sop}.dcm", 1)

    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    explicit, jpeg = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"
    cxs = move_contexts(
        [inst("1.1", ct, explicit), inst("1.2", ct, explicit), inst("1.3", ct, jpeg),
         inst("1.4", mr, explicit)]
    )  # fmt: skip
    assert sorted((c.abstract_syntax, tuple(c.transfer_syntax)) for c in cxs) == [
        (ct, (explicit,)),
        (ct, (jpeg,)),
        (mr, (explicit,)),
    ]
    many = [inst(f"1.{n}", f"1.2.840.10008.5.1.4.1.1.{n}", explicit) for n in range(200)]
    assert len(move_contexts(many)) == MAX_MOVE_CONTEXTS


@pytest.mark.parametrize(
    ("host", "port", "ok"),
    [
        ("127.0.0.1", 104, True),
        ("::1", 11112, True),
        ("pacs-1.hospital.example", 65535, True),
        ("", 0, True),  # no address: a caller only
        ("pacs", 0, False),
        ("", 104, False),
        ("pacs", 65536, False),
        ("pacs_1", 104, False),
        ("-pacs", 104, False),
        ("a b", 104, False),
        ("x" * 254, 104, False),
        ("host/../etc", 104, False),
    ],
)
def test_move_destination_addresses(host: str, port: int, ok: bool, tmp_path: Any) -> None:
    from medledger.crypto.keys import PrivateKey
    from medledger.dicom.allowlist import AllowList
    from medledger.errors import InvalidInput

    lst = AllowList(tmp_path / "allowed_aes.json")
    ident, admin = PrivateKey.generate().id, PrivateKey.generate().id
    if not ok:
        with pytest.raises(InvalidInput) as exc:
            lst.allow("VIEWER", ident, added_by=admin, now_ms=1, host=host, port=port)
        assert exc.value.code == "BAD_ADDRESS"
        assert lst.entries() == [] and not (tmp_path / "allowed_aes.json").exists()
        return
    entry, created = lst.allow("VIEWER", ident, added_by=admin, now_ms=1, host=host, port=port)
    assert created and (entry.host, entry.port) == (host, port)
    # the address survives a reload, and can be changed for the same identity
    assert AllowList(tmp_path / "allowed_aes.json").entries() == [entry]
    moved, created = lst.allow(
        "VIEWER", ident, added_by=admin, now_ms=2, host="10.0.0.9", port=4242
    )
    assert not created and (moved.host, moved.port) == ("10.0.0.9", 4242)
    assert AllowList(tmp_path / "allowed_aes.json").get("VIEWER") == moved

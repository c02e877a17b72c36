"""The DICOM gateway's spool, UID and PatientID validation, patient links, gateway key."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from medledger.crypto.keys import PrivateKey
from medledger.dicom.gatewaykey import GATEWAY_KEY_FILE, ensure_gateway_key, gateway_id
from medledger.dicom.patients import PatientLinks
from medledger.dicom.spool import Spool, StudyMeta
from medledger.dicom.uids import is_uid, patient_id_problem
from medledger.errors import Conflict, InvalidInput, NodeError

STUDY = "1.2.826.0.1.3680043.8.498.1"
META = StudyMeta(identity="mlservice", calling_ae="CT_1", patient_id="MRN-1")


@pytest.mark.parametrize(
    "uid", ["1", "0", "1.2.840.10008.1.2.1", "2.25." + "9" * 39, "1." + "0." * 30 + "12"]
)
def test_valid_uids(uid: str) -> None:
    assert is_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        ".",
        "1.",
        ".1",
        "1..2",
        "01.2",
        "1.02",
        "1.2a",
        "1.2 ",
        "../../etc",
        "1/2",
        "1.2\x00",
        "1." * 32 + "1",  # 65 characters
        None,
        12,
    ],
)
def test_invalid_uids(uid: object) -> None:
    assert not is_uid(uid)


def test_patient_ids() -> None:
    assert patient_id_problem("MRN-0001") is None
    assert patient_id_problem("A" * 64) is None
    for bad in ("", "A" * 65, " X", "X ", "a\\b", "a\nb", "a\x00", 5):
        assert patient_id_problem(bad) is not None, bad


def test_spool_put_is_durable_and_closes_into_a_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.put(STUDY, "1.2.3", b"DICM-one", META, association=7)
    assert path == tmp_path / "spool" / STUDY / "1.2.3.dcm"
    assert path.read_bytes() == b"DICM-one"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    spool.put(STUDY, "1.2.4", b"DICM-two", META, association=7)
    assert spool.open_studies() == {STUDY: 2}

    # not due while its association is open, nor before the quiet period
    assert spool.due(0.0) == []
    assert spool.due(0.0, now=time.monotonic() + 121) == [STUDY]  # stale: due anyway
    spool.association_closed(7)
    assert spool.due(3600.0) == []
    assert spool.due(0.0) == [STUDY]

    batch = spool.close(STUDY)
    assert batch is not None and batch.study_uid == STUDY and batch.meta == META
    assert batch.path.parent == tmp_path / "sealing"
    assert sorted(p.name for p in batch.path.glob("*.dcm")) == ["1.2.3.dcm", "1.2.4.dcm"]
    assert spool.open_studies() == {} and spool.close(STUDY) is None

    # a late instance of the same study starts a new folder (a new record)
    spool.put(STUDY, "1.2.5", b"DICM-late", META, association=8)
    assert spool.open_studies() == {STUDY: 1}
    assert [b.path for b in spool.batches()] == [batch.path]
    spool.discard(batch)
    assert spool.batches() == [] and not batch.path.exists()


def test_spool_refuses_bad_uids_and_a_second_patient(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for study, sop in (("../x", "1.2"), (STUDY, "1.2/../../x"), (STUDY, "")):
        with pytest.raises(InvalidInput) as exc:
            spool.put(study, sop, b"x", META, association=1)
        assert exc.value.code == "BAD_UID"
    spool.put(STUDY, "1.2.3", b"x", META, association=1)
    other = StudyMeta(identity="mlservice", calling_ae="CT_1", patient_id="MRN-2")
    with pytest.raises(Conflict) as conflict:
        spool.put(STUDY, "1.2.4", b"y", other, association=1)
    assert conflict.value.code == "OTHER_PATIENT"
    assert sorted(p.name for p in (tmp_path / "spool" / STUDY).iterdir()) == [
        ".study.json",
        "1.2.3.dcm",
    ]


def test_spool_picks_up_open_studies_and_batches_after_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put(STUDY, "1.2.3", b"a", META, association=1)
    spool.put("1.2.9", "1.2.10", b"b", META, association=1)
    closed = spool.close("1.2.9")
    assert closed is not None

    again = Spool(tmp_path)  # a restart: the open study is due at once
    assert again.due(3600.0) == [STUDY]
    assert [b.path for b in again.batches()] == [closed.path]
    assert again.batches()[0].meta == META


def test_patient_links(tmp_path: Path) -> None:
    path = tmp_path / "dicom" / "patients.json"
    links = PatientLinks(path)
    patient, other, admin = (PrivateKey.generate().id for _ in range(3))
    link, created = links.link("MRN-1", patient, added_by=admin, now_ms=5)
    assert created and links.get("MRN-1") == link and link.patient == patient
    assert links.link("MRN-1", patient, added_by=admin, now_ms=6) == (link, False)
    with pytest.raises(Conflict) as exc:
        links.link("MRN-1", other, added_by=admin, now_ms=7)
    assert exc.value.code == "MRN_IN_USE"
    with pytest.raises(InvalidInput) as bad:
        links.link(" MRN", patient, added_by=admin, now_ms=7)
    assert bad.value.code == "BAD_MRN"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PatientLinks(path).links() == [link]

    path.write_text(json.dumps({"version": 1, "links": [{"mrn": "x"}]}))
    with pytest.raises(NodeError) as broken:
        PatientLinks(path)
    assert broken.value.code == "DICOM_PATIENTS_INVALID"


def test_gateway_key_is_created_once_and_private(tmp_path: Path) -> None:
    assert gateway_id(tmp_path) is None
    key = ensure_gateway_key(tmp_path)
    assert stat.S_IMODE((tmp_path / GATEWAY_KEY_FILE).stat().st_mode) == 0o600
    assert ensure_gateway_key(tmp_path).id == key.id == gateway_id(tmp_path)

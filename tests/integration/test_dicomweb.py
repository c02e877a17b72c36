"""DICOMweb (STOW-RS, QIDO-RS, WADO-RS) against a real node, driven by the
``dicomweb-client`` package with bearer tokens.

One running consortium for the module, its DICOM section tuned for tests (a 1 s
quiet period). A PACS service STOWs a study of three instances (two CT copies in one
series, one MR) made from pydicom's test files; the gateway seals it into one
``imaging-study`` record and indexes it. Queries and retrievals are then made as the
PACS and as clinicians, in and out of the patient's care. Retrieved Part 10 files are
compared byte for byte with what dicomweb-client sent (``pydicom.dcmwrite`` of each
dataset, which is exactly the body part it posts).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from requests.exceptions import HTTPError

from medledger.client import Client
from medledger.crypto.keys import load_key_file

from .harness import (
    Consortium,
    Identity,
    cli_json,
    expect_error,
    running_consortium,
    signed_get,
)
from .test_dicom_scp import listener

SEAL_TIMEOUT_S = 40.0
MAX_INSTANCE_BYTES = 200_000
TOKEN_LIFETIME_MS = 30 * 60_000
MRN = "MRN-WEB-1"


def study_datasets(patient_id: str) -> list[Dataset]:
    """Two CT instances (one series) and an MR instance of one new study."""
    study_uid = generate_uid()
    ct_series = generate_uid()
    out = []
    for name in ("CT_small.dcm", "CT_small.dcm", "MR_small.dcm"):
        path = get_testdata_file(name)
        assert path is not None
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study_uid
        if name.startswith("CT"):
            ds.SeriesInstanceUID = ct_series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = patient_id
        ds.StudyDate = "20200315"
        out.append(ds)
    return out


def part10(ds: Dataset) -> bytes:
    """The body part dicomweb-client's store_instances sends for ``ds``."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds)
    return buf.getvalue()


class Setup:
    def __init__(self, c: Consortium) -> None:
        self.c = c
        self.url = c.api + "/dicom-web"
        self.gateway_id = str(listener(c)["gateway_id"])
        with c.admin() as admin:
            assert admin.enroll(self.gateway_id, "service")["code"] == "OK"
            self.pacs = c.enroll("pacs", "service")
            self.patient = c.enroll("patient", "patient")
            self.doctor = c.enroll("doctor", "clinician")
            admin.dicom_link_patient(MRN, self.patient.id)
        # a clinician of the other institution: sees no metadata of hospital-a's records
        self.stranger = c.new_key("stranger")
        other = c.info["institutions"][1]
        with Client(other["api"], load_key_file(Path(other["admin_key"]))) as admin_b:
            assert admin_b.enroll(self.stranger.id, "clinician")["code"] == "OK"
        self.datasets = study_datasets(MRN)
        self.study_uid = str(self.datasets[0].StudyInstanceUID)
        self.sent = {str(ds.SOPInstanceUID): part10(ds) for ds in self.datasets}

    def token(self, who: Identity, scopes: tuple[str, ...] = ("read",)) -> str:
        with self.c.client(who) as client:
            return client.issue_token(list(scopes), TOKEN_LIFETIME_MS)

    def web(self, who: Identity | str) -> DICOMwebClient:
        token = who if isinstance(who, str) else self.token(who)
        return DICOMwebClient(url=self.url, headers={"Authorization": f"Bearer {token}"})

    def http(self, who: Identity | str) -> httpx.Client:
        token = who if isinstance(who, str) else self.token(who)
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0
        )


def spooled(s: Setup) -> list[Path]:
    root = s.c.home / "dicom"
    return [p for d in ("spool", "sealing") for p in (root / d).rglob("*.dcm")]


def wait_indexed(web: DICOMwebClient, study_uid: str, instances: int) -> None:
    deadline = time.monotonic() + SEAL_TIMEOUT_S
    while True:
        found = web.search_for_instances(study_instance_uid=study_uid)
        if len(found) >= instances:
            return
        assert time.monotonic() < deadline, f"study not indexed: {found}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def s(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_consortium(tmp_path_factory.mktemp("dicomweb"), start=False) as c:
        c.init(institutions=2)
        config_file = c.home / "config.json"
        cfg = json.loads(config_file.read_text())
        cfg["dicom"].update(quiet_s=1.0, retry_s=1.0, max_instance_bytes=MAX_INSTANCE_BYTES)
        config_file.write_text(json.dumps(cfg))
        c.up()
        setup = Setup(c)
        pacs = setup.web(setup.pacs)
        result = pacs.store_instances(setup.datasets)
        refs = result.ReferencedSOPSequence
        assert sorted(str(r.ReferencedSOPInstanceUID) for r in refs) == sorted(setup.sent)
        assert "FailedSOPSequence" not in result
        assert str(result.RetrieveURL).endswith(f"/dicom-web/studies/{setup.study_uid}")
        wait_indexed(pacs, setup.study_uid, len(setup.datasets))
        yield setup


def test_qido_studies_series_instances_with_filters(s: Setup) -> None:
    pacs = s.web(s.pacs)
    (study,) = pacs.search_for_studies(search_filters={"PatientID": MRN})
    ds = Dataset.from_json(study)
    assert ds.StudyInstanceUID == s.study_uid and ds.PatientID == MRN
    assert int(ds.NumberOfStudyRelatedInstances) == 3 and int(ds.NumberOfStudyRelatedSeries) == 2
    assert sorted(ds.ModalitiesInStudy) == ["CT", "MR"]
    assert str(ds.RetrieveURL).endswith(f"/studies/{s.study_uid}")
    # by tag, wildcard, a date range, a modality, a UID list
    assert len(pacs.search_for_studies(search_filters={"00100020": "MRN-WEB-*"})) == 1
    date = str(s.datasets[0].StudyDate)
    assert len(pacs.search_for_studies(search_filters={"StudyDate": f"{date}-{date}"})) == 1
    assert pacs.search_for_studies(search_filters={"StudyDate": "19000101-19000102"}) == []
    assert len(pacs.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})) == 1
    two = pacs.search_for_studies(
        search_filters={"StudyInstanceUID": f"1.2.3,{s.study_uid}"}, fields=["all"]
    )
    assert len(two) == 1

    series = pacs.search_for_series(study_instance_uid=s.study_uid)
    by_modality = {Dataset.from_json(x).Modality: Dataset.from_json(x) for x in series}
    assert set(by_modality) == {"CT", "MR"}
    assert int(by_modality["CT"].NumberOfSeriesRelatedInstances) == 2
    ct_series = str(by_modality["CT"].SeriesInstanceUID)
    assert len(pacs.search_for_series(search_filters={"Modality": "CT"})) >= 1

    instances = pacs.search_for_instances(
        study_instance_uid=s.study_uid, series_instance_uid=ct_series
    )
    assert len(instances) == 2
    got = {str(Dataset.from_json(x).SOPInstanceUID) for x in instances}
    assert got == {str(d.SOPInstanceUID) for d in s.datasets[:2]}
    assert (
        len(pacs.search_for_instances(search_filters={"StudyInstanceUID": s.study_uid}, limit=1))
        == 1
    )
    assert len(pacs.search_for_instances(study_instance_uid=s.study_uid, offset=2)) == 1


def test_qido_bad_queries_are_refused(s: Setup) -> None:
    with s.http(s.pacs) as http:
        for query in ("NotAKeyword=1", "limit=-5", "fuzzymatching=perhaps", "00081111.00081150=1"):
            expect_error(http.get(f"/studies?{query}"), 400, "BAD_QUERY", query)
        expect_error(http.get("/studies/1.2.x/series"), 400, "BAD_UID")
        r = http.get("/studies", params={"PatientID": "nobody"})
        assert r.status_code == 204 and r.content == b""
        r = http.get("/studies", params={"PatientID": MRN})
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"


def test_wado_returns_the_stored_bytes_and_metadata(s: Setup) -> None:
    token = s.token(s.doctor)
    doctor = s.web(token)
    url = f"{s.url}/studies/{s.study_uid}"
    auth = {"Authorization": f"Bearer {token}"}
    # same institution, not in care: the metadata is visible, the read is denied
    assert len(doctor.search_for_studies(search_filters={"PatientID": MRN})) == 1
    expect_error(httpx.get(url, headers=auth, timeout=60), 403, "ACCESS_DENIED")
    with s.c.admin() as admin:
        admin.start_care(s.patient.id, s.doctor.id)
    # the study, byte for byte (raw parts through dicomweb-client's multipart decoder)
    resp = requests.get(url, headers=auth, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    parts = list(doctor._decode_multipart_message(resp, stream=False))
    assert sorted(parts) == sorted(s.sent.values())
    # decoded by dicomweb-client's own retrieve_study
    got = {str(ds.SOPInstanceUID): ds for ds in doctor.retrieve_study(s.study_uid)}
    assert set(got) == set(s.sent)
    ct = s.datasets[0]
    one = doctor.retrieve_instance(s.study_uid, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert one.PixelData == ct.PixelData and one.PatientID == MRN

    meta = doctor.retrieve_study_metadata(s.study_uid)
    assert {
        Dataset.from_json(m).SOPInstanceUID
        for m in [{k: v for k, v in x.items() if k != "7FE00010"} for x in meta]
    } == set(s.sent)
    pixel = meta[0]["7FE00010"]
    assert "/frames/1" in pixel["BulkDataURI"]

    (frame,) = doctor.retrieve_instance_frames(
        s.study_uid, ct.SeriesInstanceUID, ct.SOPInstanceUID, frame_numbers=[1]
    )
    assert frame == ct.PixelData
    png = doctor.retrieve_instance_rendered(
        s.study_uid, ct.SeriesInstanceUID, ct.SOPInstanceUID, media_types=("image/png",)
    )
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (ct.Columns, ct.Rows)

    # every retrieval was an allowed read of the doctor, on the patient's trail
    with s.c.client(s.patient) as patient:
        reads = [e for e in patient.audit(s.patient.id) if e["action"] == "read"]
    mine = [e for e in reads if e["actor"] == s.doctor.id and e["outcome"] == "allowed"]
    assert len(mine) >= 6 and all(f"via={s.gateway_id}" in e["detail"] for e in mine)


def test_a_clinician_not_in_care_sees_nothing_and_is_denied(s: Setup) -> None:
    stranger = s.web(s.stranger)
    assert stranger.search_for_studies(search_filters={"PatientID": MRN}) == []
    assert stranger.search_for_instances(study_instance_uid=s.study_uid) == []
    with s.http(s.stranger) as http:
        expect_error(http.get(f"/studies/{s.study_uid}"), 403, "ACCESS_DENIED")
    with s.c.client(s.patient) as patient:
        denied = [e for e in patient.audit(s.patient.id) if e["outcome"] == "denied"]
    assert any(e["actor"] == s.stranger.id for e in denied)


def test_wado_needs_a_token_and_an_acceptable_type(s: Setup) -> None:
    with s.c.http() as http:
        path = f"/dicom-web/studies/{s.study_uid}"
        expect_error(signed_get(http, s.pacs.key, path), 401, "TOKEN_REQUIRED")
    with s.http(s.pacs) as http:
        r = http.get(f"/studies/{s.study_uid}/metadata", headers={"Accept": "image/png"})
        expect_error(r, 406, "NOT_ACCEPTABLE")
        expect_error(http.get(f"/studies/{s.study_uid}?purpose=fun"), 400, "BAD_PURPOSE")
        expect_error(http.get("/studies/1.2.3.4.5.6.7"), 404, "STUDY_NOT_FOUND")
        expect_error(http.get("/studies/1..2/metadata"), 400, "BAD_UID")
    for token in ("garbage", "mlt1" + "A" * 40):
        with s.http(token) as http:
            r = http.get("/studies")
            assert r.status_code == 401, r.text
            assert r.json()["error"]["code"].startswith("TOKEN_"), r.text


def stow_body(parts: list[bytes], boundary: str = "xyzzy") -> bytes:
    out = b""
    for p in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


STOW_CT = 'multipart/related; type="application/dicom"; boundary=xyzzy'


def test_hostile_stow_is_refused_and_spools_nothing(s: Setup) -> None:
    (good, *_) = study_datasets("MRN-HOSTILE-WEB")
    good_bytes = part10(good)
    before = spooled(s)
    with s.http(s.pacs) as http:
        truncated = stow_body([good_bytes, good_bytes])[:-200]
        r = http.post("/studies", content=truncated, headers={"Content-Type": STOW_CT})
        expect_error(r, 400, "STOW_TRUNCATED")
        r = http.post("/studies", content=good_bytes, headers={"Content-Type": "application/dicom"})
        expect_error(r, 415, "UNSUPPORTED_MEDIA_TYPE")
        r = http.post("/studies", content=stow_body([]), headers={"Content-Type": STOW_CT})
        expect_error(r, 400, "STOW_EMPTY")
        # a non-DICOM part, a truncated file, another study than the path's
        r = http.post(
            f"/studies/{s.study_uid}",
            content=stow_body([b"hello, world", good_bytes[:3000], good_bytes]),
            headers={"Content-Type": STOW_CT},
        )
        assert r.status_code == 409, r.text
        assert r.headers["content-type"] == "application/dicom+json"
        failed = Dataset.from_json(r.json()).FailedSOPSequence
        assert [int(f.FailureReason) for f in failed] == [0xC000, 0xC000, 0xA900]
        expect_error(
            http.post(
                "/studies/1.2.x", content=stow_body([good_bytes]), headers={"Content-Type": STOW_CT}
            ),
            400,
            "BAD_UID",
        )
    # a clinician may not STOW
    with s.http(s.doctor) as http:
        r = http.post(
            "/studies", content=stow_body([good_bytes]), headers={"Content-Type": STOW_CT}
        )
        expect_error(r, 403, "ACCESS_DENIED")
    assert spooled(s) == before
    log = (s.c.home / "node.log").read_text()
    assert "MRN-HOSTILE-WEB" not in log


def test_partial_stow_is_202(s: Setup) -> None:
    a, b, _ = study_datasets("MRN-PARTIAL")
    bad = pydicom.dcmread(io.BytesIO(part10(b)))
    del bad.PatientID
    web = s.web(s.pacs)
    with pytest.raises(HTTPError) as exc:  # dicomweb-client raises on 409 only
        web.store_instances([bad])
    assert exc.value.response.status_code == 409
    with s.http(s.pacs) as http:
        r = http.post(
            "/studies",
            content=stow_body([part10(a), part10(bad)]),
            headers={"Content-Type": STOW_CT},
        )
    assert r.status_code == 202, r.text
    doc = Dataset.from_json(r.json())
    assert [str(x.ReferencedSOPInstanceUID) for x in doc.ReferencedSOPSequence] == [
        str(a.SOPInstanceUID)
    ]
    assert [int(x.FailureReason) for x in doc.FailedSOPSequence] == [0xA900]


def test_token_cli_issues_a_working_token(s: Setup) -> None:
    doc = cli_json("token", "issue", "--node", s.c.api, "--as", s.pacs.key_file, "--ttl", "5m")
    studies = s.web(str(doc["token"])).search_for_studies(search_filters={"PatientID": MRN})
    assert len(studies) == 1

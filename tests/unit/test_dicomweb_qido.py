"""QIDO-RS parameters and the DICOM JSON model (medledger.dicom.qido, .dicomjson)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medledger.dicom import dicomjson, qido
from medledger.dicom.render import read
from medledger.errors import InvalidInput


def test_keywords_tags_uid_lists_and_paging() -> None:
    q = qido.parse(
        [
            ("PatientID", "P*"),
            ("00080020", "20200101-20201231"),
            ("StudyInstanceUID", "1.2.3,1.2.4"),
            ("limit", "5"),
            ("offset", "10"),
            ("includefield", "all"),
            ("includefield", "00081030,StudyDescription"),
            ("fuzzymatching", "false"),
        ]
    )
    assert q.match == {
        "PatientID": "P*",
        "StudyDate": "20200101-20201231",
        "StudyInstanceUID": "1.2.3\\1.2.4",
    }
    assert (q.limit, q.offset, q.fuzzy, q.nothing) == (5, 10, False, False)
    assert q.includefield == ("all", "StudyDescription", "StudyDescription")


def test_path_uids_win_and_contradictions_match_nothing() -> None:
    q = qido.parse([("Modality", "CT")], {"StudyInstanceUID": "1.2.3"})
    assert q.match == {"Modality": "CT", "StudyInstanceUID": "1.2.3"} and not q.nothing
    assert qido.parse([("StudyInstanceUID", "9.9")], {"StudyInstanceUID": "1.2.3"}).nothing


@pytest.mark.parametrize(
    "items",
    [
        [("NotAKeyword", "x")],
        [("ffffffff", "x")],
        [("00081111.00081150", "1.2")],
        [("limit", "-1")],
        [("limit", "many")],
        [("limit", "100000000")],
        [("offset", "1e3")],
        [("fuzzymatching", "maybe")],
        [("includefield", "Bogus")],
        [("PatientID", "a"), ("00100020", "b")],
        [("limit", "1"), ("limit", "2")],
        [("Patient ID", "x")],
    ],
)
def test_bad_queries(items: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidInput) as exc:
        qido.parse(items)
    assert exc.value.code == "BAD_QUERY"


def test_row_json_uses_the_dicom_json_model() -> None:
    doc = dicomjson.row_json(
        {
            "StudyInstanceUID": "1.2.3",
            "PatientName": "Doe^Jane",
            "ModalitiesInStudy": "CT\\MR",
            "NumberOfStudyRelatedInstances": "3",
            "StudyDate": "",
            "record_id": "r00",
        },
        "http://node/dicom-web/studies/1.2.3",
    )
    assert doc["0020000D"] == {"vr": "UI", "Value": ["1.2.3"]}
    assert doc["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert doc["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert doc["00201208"] == {"vr": "IS", "Value": [3]}
    assert doc["00080020"] == {"vr": "DA"}
    assert doc["00081190"]["Value"] == ["http://node/dicom-web/studies/1.2.3"]
    assert list(doc) == sorted(doc)  # ordered by tag
    assert Dataset.from_json(doc).PatientName == "Doe^Jane"


def test_metadata_replaces_pixel_data_with_a_bulk_data_uri() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = read(Path(path).read_bytes())
    doc = dicomjson.metadata_json(ds, "http://x/frames/1")
    assert doc["7FE00010"] == {"vr": "OW", "BulkDataURI": "http://x/frames/1"}
    assert doc["00080018"]["Value"] == [str(ds.SOPInstanceUID)]
    assert "00020010" not in doc  # no file meta
    back = Dataset.from_json({k: v for k, v in doc.items() if k != "7FE00010"})
    assert back.Rows == ds.Rows and back.StudyInstanceUID == ds.StudyInstanceUID

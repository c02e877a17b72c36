"""The gateway's study index (SQLite): C-FIND matching, levels, counts, paging, visibility,
hostile values, and indexing real Part 10 files."""

from __future__ import annotations

import threading
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medledger.dicom.index import IndexedInstance, StudyIndex, read_instance
from medledger.errors import InvalidInput


def inst(
    sop: str,
    *,
    study: str = "1.2.1",
    series: str = "1.2.1.1",
    record: str = "rec-a",
    **attrs: str,
) -> IndexedInstance:
    base = {
        "PatientID": "MRN-1",
        "PatientName": "Doe^Jane",
        "StudyDate": "20200315",
        "StudyTime": "101500",
        "Modality": "CT",
        "AccessionNumber": "ACC-1",
    }
    base.update(attrs)
    return IndexedInstance(
        record_id=record,
        patient="mlpatient",
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1",
        member=f"{sop}.dcm",
        size=100,
        attrs=base,
    )


@pytest.fixture
def index(tmp_path: Path) -> StudyIndex:
    idx = StudyIndex(tmp_path / "dicom" / "index.sqlite")
    idx.add(
        [
            inst("1.2.1.1.1"),
            inst("1.2.1.1.2"),
            inst("1.2.1.2.1", series="1.2.1.2", Modality="MR"),
            inst(
                "1.3.1.1.1",
                study="1.3.1",
                series="1.3.1.1",
                record="rec-b",
                PatientID="MRN-2",
                PatientName="Roe^Richard",
                StudyDate="20211201",
                StudyTime="230000",
                AccessionNumber="A%_'1",
            ),
        ]
    )
    return idx


def uids(rows: list[dict[str, str]], key: str = "StudyInstanceUID") -> list[str]:
    return [r[key] for r in rows]


def test_study_level_counts_and_modalities(index: StudyIndex) -> None:
    rows = index.search("STUDY", {})
    assert uids(rows) == ["1.2.1", "1.3.1"]
    first = rows[0]
    assert first["NumberOfStudyRelatedSeries"] == "2"
    assert first["NumberOfStudyRelatedInstances"] == "3"
    assert first["ModalitiesInStudy"] == "CT\\MR"
    assert first["record_id"] == "rec-a" and first["PatientID"] == "MRN-1"


def test_series_and_image_levels(index: StudyIndex) -> None:
    series = index.search("SERIES", {"StudyInstanceUID": "1.2.1"})
    assert uids(series, "SeriesInstanceUID") == ["1.2.1.1", "1.2.1.2"]
    assert series[0]["NumberOfSeriesRelatedInstances"] == "2"
    assert series[1]["Modality"] == "MR"
    images = index.search("IMAGE", {"SeriesInstanceUID": "1.2.1.1"})
    assert uids(images, "SOPInstanceUID") == ["1.2.1.1.1", "1.2.1.1.2"]
    assert images[0]["StudyInstanceUID"] == "1.2.1" and images[0]["SOPClassUID"]
    patients = index.search("PATIENT", {"PatientID": "MRN-1"})
    assert len(patients) == 1 and patients[0]["NumberOfPatientRelatedInstances"] == "3"


def test_exact_wildcard_and_names(index: StudyIndex) -> None:
    assert uids(index.search("STUDY", {"PatientID": "MRN-2"})) == ["1.3.1"]
    assert uids(index.search("STUDY", {"PatientID": "MRN-*"})) == ["1.2.1", "1.3.1"]
    assert uids(index.search("STUDY", {"PatientID": "MRN-?"})) == ["1.2.1", "1.3.1"]
    assert uids(index.search("STUDY", {"PatientID": "MRN"})) == []
    assert uids(index.search("STUDY", {"PatientID": "*"})) == ["1.2.1", "1.3.1"]
    assert uids(index.search("STUDY", {"PatientName": "doe^*"})) == ["1.2.1"]
    assert uids(index.search("STUDY", {"PatientName": "ROE^RICHARD"})) == ["1.3.1"]
    assert uids(index.search("STUDY", {"AccessionNumber": "acc-1"})) == []  # not a name


def test_date_ranges(index: StudyIndex) -> None:
    assert uids(index.search("STUDY", {"StudyDate": "20200101-20201231"})) == ["1.2.1"]
    assert uids(index.search("STUDY", {"StudyDate": "20210101-"})) == ["1.3.1"]
    assert uids(index.search("STUDY", {"StudyDate": "-20200315"})) == ["1.2.1"]
    assert uids(index.search("STUDY", {"StudyDate": "20200315"})) == ["1.2.1"]
    assert uids(index.search("STUDY", {"StudyDate": "20220101-20221231"})) == []
    assert uids(index.search("STUDY", {"StudyTime": "1000-1100"})) == ["1.2.1"]


def test_uid_lists_and_modalities_in_study(index: StudyIndex) -> None:
    assert uids(index.search("STUDY", {"StudyInstanceUID": "1.3.1\\1.2.1"})) == ["1.2.1", "1.3.1"]
    assert uids(index.search("STUDY", {"StudyInstanceUID": "1.9"})) == []
    assert uids(index.search("STUDY", {"ModalitiesInStudy": "MR"})) == ["1.2.1"]
    assert uids(index.search("STUDY", {"ModalitiesInStudy": "US\\CT"})) == ["1.2.1", "1.3.1"]
    # keys the level does not hold are ignored
    assert uids(index.search("STUDY", {"SOPInstanceUID": "9.9"})) == ["1.2.1", "1.3.1"]


def test_visibility_limit_offset(index: StudyIndex) -> None:
    assert uids(index.search("STUDY", {}, record_ids={"rec-b"})) == ["1.3.1"]
    assert index.search("STUDY", {}, record_ids=set()) == []
    assert uids(index.search("STUDY", {}, limit=1)) == ["1.2.1"]
    assert uids(index.search("STUDY", {}, limit=1, offset=1)) == ["1.3.1"]
    assert index.search("STUDY", {}, offset=5) == []
    assert len(index.search("IMAGE", {}, record_ids={"rec-a"})) == 3
    assert index.record_ids() == ["rec-a", "rec-b"]


def test_visibility_is_decided_only_for_the_records_a_query_may_match(index: StudyIndex) -> None:
    assert index.candidate_record_ids("STUDY", {}) == ["rec-a", "rec-b"]
    assert index.candidate_record_ids("STUDY", {"PatientID": "MRN-2"}) == ["rec-b"]
    assert index.candidate_record_ids("IMAGE", {"SOPInstanceUID": "1.2.1.2.1"}) == ["rec-a"]
    assert index.candidate_record_ids("STUDY", {"StudyInstanceUID": "9.9"}) == []
    # a search restricted to the candidates finds what an unrestricted one finds
    for level, match in (("STUDY", {"PatientID": "MRN-2"}), ("SERIES", {"Modality": "MR"})):
        wanted = index.search(level, match)
        only = set(index.candidate_record_ids(level, match))
        assert index.search(level, match, record_ids=only) == wanted
    with pytest.raises(InvalidInput):
        index.candidate_record_ids("WARD", {})


def test_hostile_values_match_literally(index: StudyIndex) -> None:
    for value in ("%", "_", "'", "' OR '1'='1", "A%", "A_'1", ".*", "[A]*", "\\"):
        assert index.search("STUDY", {"AccessionNumber": value}) == [], value
        assert index.search("STUDY", {"StudyInstanceUID": value}) == [], value
        assert index.search("STUDY", {"PatientID": value}) == [], value
    assert uids(index.search("STUDY", {"AccessionNumber": "A%_'1"})) == ["1.3.1"]
    assert uids(index.search("STUDY", {"AccessionNumber": "A%*"})) == ["1.3.1"]
    assert len(index.search("IMAGE", {})) == 4  # nothing dropped


def test_bad_queries(index: StudyIndex) -> None:
    for level in ("", "FRAME", "STUDY; DROP TABLE instances"):
        with pytest.raises(InvalidInput) as exc:
            index.search(level, {})
        assert exc.value.code == "BAD_QUERY"
    for value in ("x" * 1025, "a\x00b", "a\nb"):
        with pytest.raises(InvalidInput) as exc:
            index.search("STUDY", {"PatientID": value})
        assert exc.value.code == "BAD_QUERY"
    with pytest.raises(InvalidInput):
        index.search("STUDY", {}, limit=-1)
    assert len(index.search("IMAGE", {})) == 4


def test_add_is_idempotent_and_persistent(index: StudyIndex, tmp_path: Path) -> None:
    index.add([inst("1.2.1.1.1", record="rec-other")])
    (again,) = index.instances("1.2.1", "1.2.1.1", "1.2.1.1.1")
    assert again.record_id == "rec-a"
    index.close()
    reopened = StudyIndex(tmp_path / "dicom" / "index.sqlite")
    assert [i.sop_uid for i in reopened.instances("1.2.1")] == [
        "1.2.1.1.1",
        "1.2.1.1.2",
        "1.2.1.2.1",
    ]
    assert reopened.instances("1.2.1", "1.2.1.2")[0].attrs["Modality"] == "MR"
    assert (tmp_path / "dicom" / "index.sqlite").stat().st_mode & 0o077 == 0


def test_threads_share_the_index(index: StudyIndex) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for j in range(20):
                index.add([inst(f"2.{n}.{j}", study=f"2.{n}", series=f"2.{n}.1")])
                index.search("STUDY", {"PatientID": "MRN-1"})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(index.search("IMAGE", {})) == 4 + 80


def test_read_instance_from_a_real_file() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    data = Path(path).read_bytes()
    entry = read_instance(
        BytesIO(data), record_id="rec", patient="mlp", member="x/CT.dcm", size=len(data)
    )
    assert entry is not None
    ds = pydicom.dcmread(path)
    assert entry.sop_uid == ds.SOPInstanceUID and entry.study_uid == ds.StudyInstanceUID
    assert entry.series_uid == ds.SeriesInstanceUID
    assert entry.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert entry.attrs["Modality"] == "CT"
    assert entry.attrs["PatientName"] == str(ds.PatientName)
    assert entry.attrs["Rows"] == "128" and entry.member == "x/CT.dcm"

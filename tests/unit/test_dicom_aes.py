"""AE titles, the off-chain AE-title allow-list, and the association verdict."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from medledger.app.model import ACTIVE, SUSPENDED, Identity
from medledger.crypto.keys import PrivateKey
from medledger.dicom import allowlist as allowlist_mod
from medledger.dicom.aetitle import (
    MAX_AE_TITLE,
    ae_title_problem,
    default_ae_title,
    is_ae_title,
    validate_ae_title,
)
from medledger.dicom.allowlist import AllowedAE, AllowList
from medledger.dicom.gateway import decide
from medledger.errors import Conflict, InvalidInput, MedLedgerError, NodeError, NotFound
from medledger.node.config import DicomConfig, NodeConfig, load_config, save_config

SERVICE = PrivateKey.generate().id
OTHER = PrivateKey.generate().id
ADMIN = PrivateKey.generate().id

# ---- AE titles ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "title", ["A", "CT_SCANNER_1", "X" * MAX_AE_TITLE, "CT 1", "!\"#$%&'()*+,-./:", "a~{|}`"]
)
def test_valid_ae_titles(title: str) -> None:
    assert validate_ae_title(title) == title
    assert is_ae_title(title) and ae_title_problem(title) is None


@pytest.mark.parametrize(
    ("title", "why"),
    [
        ("", "1 to 16"),
        ("X" * (MAX_AE_TITLE + 1), "1 to 16"),
        (" CT", "start or end with a space"),
        ("CT ", "start or end with a space"),
        ("   ", "start or end with a space"),
        ("CT\\1", "backslash"),
        ("CT\t1", "printable ASCII"),
        ("CT\n", "printable ASCII"),
        ("SCANNÉR", "printable ASCII"),
        ("CT\x7f", "printable ASCII"),
        (16, "a string"),
        (None, "a string"),
    ],
)
def test_invalid_ae_titles(title: object, why: str) -> None:
    assert not is_ae_title(title)
    with pytest.raises(InvalidInput) as exc:
        validate_ae_title(title)
    assert exc.value.code == "BAD_AE_TITLE" and why in exc.value.message


def test_default_ae_title_from_the_institution_name() -> None:
    assert default_ae_title("hospital-a") == "HOSPITAL-A"
    assert default_ae_title("st-marys-university-hospital") == "ST-MARYS-UNIVERS"
    for name in ("a", "hospital-z", "x" * 32, "0-1-2-3-4-5-6-7-8-9"):
        assert is_ae_title(default_ae_title(name)), name


# ---- the node configuration ---------------------------------------------------------------


def _config(tmp_path: Path, dicom: DicomConfig | None) -> Path:
    home = tmp_path / "node"
    save_config(home, NodeConfig(name="hospital-a", chain_id="c", api_port=8700, dicom=dicom))
    return home


def test_config_dicom_listener(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, DicomConfig(port=8900)))
    assert cfg.dicom_listener() == {"host": "127.0.0.1", "port": 8900, "ae_title": "HOSPITAL-A"}
    cfg = load_config(_config(tmp_path, DicomConfig(port=8900, ae_title="MEDLEDGER 1")))
    assert cfg.dicom_ae_title() == "MEDLEDGER 1"
    for off in (None, DicomConfig(), DicomConfig(port=0), DicomConfig(port=None)):
        assert load_config(_config(tmp_path, off)).dicom_listener() is None


@pytest.mark.parametrize(
    "dicom",
    [
        {"port": 70000},
        {"port": -1},
        {"port": 8900, "host": ""},
        {"port": 8900, "ae_title": "TOO-LONG-AE-TITLE"},
        {"port": 8900, "ae_title": "BACK\\SLASH"},
        {"port": 8900, "ae_title": " LEADING"},
        {"port": 8900, "aet": "TYPO"},
    ],
)
def test_config_rejects_a_bad_dicom_listener(tmp_path: Path, dicom: dict[str, object]) -> None:
    home = _config(tmp_path, None)
    doc = json.loads((home / "config.json").read_text())
    doc["dicom"] = dicom
    (home / "config.json").write_text(json.dumps(doc))
    with pytest.raises(InvalidInput) as exc:
        load_config(home)
    assert exc.value.code == "CONFIG_INVALID"


# ---- the allow-list -------------------------------------------------------------------------


def test_allow_list_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "home" / "dicom" / "allowed_aes.json"
    acl = AllowList(path)
    assert acl.entries() == [] and not path.exists()
    entry, created = acl.allow("CT_1", SERVICE, added_by=ADMIN, now_ms=1000)
    assert created and entry == AllowedAE("CT_1", SERVICE, ADMIN, 1000)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert acl.allow("PACS A", SERVICE, added_by=ADMIN, now_ms=2000)[1]

    # allowing again for the same identity changes nothing
    again, created = acl.allow("CT_1", SERVICE, added_by=OTHER, now_ms=3000)
    assert not created and again == entry

    # a reload sees the same list, sorted by AE title
    reloaded = AllowList(path)
    assert [e.ae_title for e in reloaded.entries()] == ["CT_1", "PACS A"]
    assert reloaded.get("CT_1") == entry and reloaded.get("ct_1") is None  # case-sensitive
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and [e["ae_title"] for e in doc["allowed"]] == ["CT_1", "PACS A"]

    removed = reloaded.deny("CT_1")
    assert removed == entry and reloaded.get("CT_1") is None
    assert [e.ae_title for e in AllowList(path).entries()] == ["PACS A"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temp files left"


def test_allow_list_refusals(tmp_path: Path) -> None:
    acl = AllowList(tmp_path / "allowed_aes.json")
    acl.allow("CT_1", SERVICE, added_by=ADMIN, now_ms=1)
    cases: list[tuple[type[MedLedgerError], str, object]] = [
        (Conflict, "AE_TITLE_IN_USE", lambda: acl.allow("CT_1", OTHER, added_by=ADMIN, now_ms=2)),
        (
            InvalidInput,
            "BAD_AE_TITLE",
            lambda: acl.allow("CT\\1", SERVICE, added_by=ADMIN, now_ms=2),
        ),
        (InvalidInput, "BAD_AE_TITLE", lambda: acl.allow("", SERVICE, added_by=ADMIN, now_ms=2)),
        (InvalidInput, "BAD_IDENTITY_ID", lambda: acl.allow("CT_2", "x", added_by=ADMIN, now_ms=2)),
        (NotFound, "AE_TITLE_NOT_FOUND", lambda: acl.deny("CT_2")),
    ]
    for cls, code, call in cases:
        with pytest.raises(cls) as exc:
            call()  # type: ignore[operator]
        assert exc.value.code == code
    assert [e.ae_title for e in AllowList(acl.path).entries()] == ["CT_1"]


def test_allow_list_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allowlist_mod, "MAX_ALLOWED_AES", 3)
    acl = AllowList(tmp_path / "allowed_aes.json")
    for i in range(3):
        acl.allow(f"AE{i}", SERVICE, added_by=ADMIN, now_ms=i)
    with pytest.raises(InvalidInput) as exc:
        acl.allow("AE9", SERVICE, added_by=ADMIN, now_ms=9)
    assert exc.value.code == "TOO_MANY_AE_TITLES"
    acl.deny("AE0")
    acl.allow("AE9", SERVICE, added_by=ADMIN, now_ms=9)


def test_allow_list_concurrent_changes_all_land(tmp_path: Path) -> None:
    path = tmp_path / "allowed_aes.json"
    acl = AllowList(path)

    def add(i: int) -> None:
        for j in range(10):
            acl.allow(f"AE_{i}_{j}", SERVICE, added_by=ADMIN, now_ms=j)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(AllowList(path).entries()) == 80


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"version": 2, "allowed": []}',
        b'{"version": 1}',
        b'{"version": 1, "allowed": [], "extra": 1}',
        b'{"version": 1, "allowed": [{"ae_title": "A\\\\B", "identity": "%s", "added_by": "%s",'
        b' "added_ms": 1}]}',
        b'{"version": 1, "allowed": [{"ae_title": "A", "identity": "nope", "added_by": "%s",'
        b' "added_ms": 1}]}',
        b'{"version": 1, "allowed": [{"ae_title": "A", "identity": "%s", "added_by": "%s",'
        b' "added_ms": 1}, {"ae_title": "A", "identity": "%s", "added_by": "%s", "added_ms": 2}]}',
    ],
)
def test_a_damaged_allow_list_stops_the_node(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "allowed_aes.json"
    ids = SERVICE.encode(), ADMIN.encode()
    path.write_bytes(content.replace(b"%s", ids[0], 1).replace(b"%s", ids[1]))
    with pytest.raises(NodeError) as exc:
        AllowList(path)
    assert exc.value.code == "DICOM_ALLOWLIST_INVALID"


# ---- the verdict at association time ------------------------------------------------------


def _identity(
    role: str = "service", status: str = ACTIVE, institution: str = "hospital-a"
) -> Identity:
    return Identity(
        id=SERVICE,
        role=role,
        institution=institution,
        status=status,
        enrolled_height=1,
        enrolled_by=ADMIN,
    )


def test_verdicts() -> None:
    entry = AllowedAE("CT_1", SERVICE, ADMIN, 1)
    assert decide(None, None, "hospital-a").reason == "unknown_calling_ae"
    cases = [
        (None, False, "identity_not_enrolled"),
        (_identity(status=SUSPENDED), False, "identity_suspended"),
        (_identity(role="clinician"), False, "not_a_service"),
        (_identity(institution="hospital-b"), False, "other_institution"),
        (_identity(), True, "allowed"),
    ]
    for ident, accepted, reason in cases:
        v = decide(entry, ident, "hospital-a")
        assert (v.accepted, v.reason, v.identity) == (accepted, reason, SERVICE)
        assert not v.transient

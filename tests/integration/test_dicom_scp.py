"""The node's DICOM listener against real callers: dcmtk's echoscu and pynetdicom.

One running one-institution consortium per module (``medledger init`` gives its node a
DICOM port and the AE title HOSPITAL-A). An admin maps calling AE titles to service
identities with ``medledger dicom allow``; everyone else is refused at association
time, and so is a title whose identity was suspended on chain.

echoscu comes from Debian's dcmtk, which ``make test`` installs when it runs as root
(``make dicom-tools``); without it the tests that need it skip.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from medledger.errors import MedLedgerError

from .harness import Consortium, assert_cli_error, cli_json, expect_error, run_cli, signed_headers


def dcmtk_tool(name: str) -> str | None:
    """dcmtk's ``name`` on PATH. pynetdicom installs Python tools of the same names (in
    the venv's bin), with other options; dcmtk's say ``dcmtk`` in their ``--version``."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(folder or ".") / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        try:
            version = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "dcmtk" in version:
            return str(path)
    return None


ECHOSCU = dcmtk_tool("echoscu")
needs_echoscu = pytest.mark.skipif(
    ECHOSCU is None,
    reason="dcmtk's echoscu is not installed: run 'make dicom-tools' as root "
    "(or 'apt-get install dcmtk')",
)
NODE_AE = "HOSPITAL-A"


def listener(c: Consortium) -> dict[str, Any]:
    """The node's DICOM listener as ``medledger init`` printed it (``status`` agrees)."""
    doc: dict[str, Any] = c.inst["dicom"]
    return doc


def echoscu(c: Consortium, calling: str, called: str = NODE_AE) -> subprocess.CompletedProcess[str]:
    assert ECHOSCU is not None
    d = listener(c)
    return subprocess.run(
        [ECHOSCU, "-aet", calling, "-aec", called, "-to", "10", d["host"], str(d["port"])],
        capture_output=True,
        text=True,
        timeout=60,
    )


def node_events(c: Consortium, event: str) -> list[dict[str, Any]]:
    out = []
    for line in (c.home / "node.log").read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("event") == event:
            out.append(doc)
    return out


def wait_event(c: Consortium, event: str, **fields: Any) -> dict[str, Any]:
    """The node's last ``event`` log line with these fields (it may land a moment late)."""
    deadline = time.monotonic() + 10
    while True:
        hits = [e for e in node_events(c, event) if all(e.get(k) == v for k, v in fields.items())]
        if hits:
            return hits[-1]
        assert time.monotonic() < deadline, f"no {event} {fields} in the node log"
        time.sleep(0.1)


def allow(c: Consortium, ae_title: str, identity: str, key: Path | None = None) -> Any:
    return run_cli(
        "dicom",
        "allow",
        ae_title,
        "--identity",
        identity,
        "--node",
        c.api,
        "--as",
        key or c.admin_key_file,
        "--json",
    )


def allowed_titles(c: Consortium) -> list[str]:
    doc = cli_json("dicom", "ls", "--node", c.api, "--as", c.admin_key_file)
    return [e["ae_title"] for e in doc["allowed"]]


def test_status_shows_the_dicom_listener(consortium: Consortium) -> None:
    c = consortium
    d = c.status()["nodes"][0]["dicom"]
    assert set(d) == {"host", "port", "ae_title", "gateway_id"}
    gateway_key = c.home / "dicom" / "gateway.key"
    assert stat.S_IMODE(gateway_key.stat().st_mode) == 0o600
    assert d["gateway_id"] == json.loads(gateway_key.read_text())["id"]
    assert d["host"] == "127.0.0.1" and d["ae_title"] == NODE_AE
    assert isinstance(d["port"], int) and 1 <= d["port"] <= 65535
    assert d["port"] not in (int(c.api.rsplit(":", 1)[1]),)
    assert listener(c) == d  # what init printed
    with c.http() as http:
        assert http.get("/api/v1/status").json()["dicom"] == d
    wait_event(c, "dicom.listening", port=d["port"], ae_title=NODE_AE)


@needs_echoscu
def test_dcmtk_echoscu_allowed_and_refused(consortium: Consortium) -> None:
    c = consortium
    pacs = c.enroll("pacs", "service")

    # unknown before the admin allows it
    r = echoscu(c, "CT_SCANNER_1")
    assert r.returncode != 0, r.stdout + r.stderr
    wait_event(
        c, "dicom.association_rejected", calling_ae="CT_SCANNER_1", reason="unknown_calling_ae"
    )

    r = allow(c, "CT_SCANNER_1", pacs.id)
    assert r.code == 0, r.err
    doc = r.json()
    assert (doc["ae_title"], doc["identity"], doc["created"]) == ("CT_SCANNER_1", pacs.id, True)
    assert doc["added_by"] == c.inst["admin_id"]
    assert allowed_titles(c) == ["CT_SCANNER_1"]

    # dcmtk's echoscu: C-ECHO succeeds
    r = echoscu(c, "CT_SCANNER_1")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_event(c, "dicom.association_accepted", calling_ae="CT_SCANNER_1", identity=pacs.id)
    wait_event(c, "dicom.echo", calling_ae="CT_SCANNER_1", identity=pacs.id)

    # an unknown calling AE title, and a called AE title that is not the node's
    r = echoscu(c, "STRANGER")
    assert r.returncode != 0
    assert "calling ae title not recogni" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    wait_event(c, "dicom.association_rejected", calling_ae="STRANGER", reason="unknown_calling_ae")
    r = echoscu(c, "CT_SCANNER_1", called="HOSPITAL-Z")
    assert r.returncode != 0
    assert "called ae title not recogni" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    wait_event(
        c,
        "dicom.association_rejected",
        calling_ae="CT_SCANNER_1",
        called_ae="HOSPITAL-Z",
        reason="called_ae_mismatch",
    )

    # suspended on chain: refused from the next association on, though still listed
    cli_json("identity", "suspend", "--id", pacs.id, "--node", c.api, "--as", c.admin_key_file)
    r = echoscu(c, "CT_SCANNER_1")
    assert r.returncode != 0
    wait_event(
        c,
        "dicom.association_rejected",
        calling_ae="CT_SCANNER_1",
        identity=pacs.id,
        reason="identity_suspended",
    )
    assert allowed_titles(c) == ["CT_SCANNER_1"]

    # deny removes it
    doc = cli_json("dicom", "deny", "CT_SCANNER_1", "--node", c.api, "--as", c.admin_key_file)
    assert (doc["ae_title"], doc["identity"], doc["removed"]) == ("CT_SCANNER_1", pacs.id, True)
    assert allowed_titles(c) == []
    wait_event(c, "dicom.ae_denied", ae_title="CT_SCANNER_1", identity=pacs.id)


def pynetdicom_echo(c: Consortium, calling: str, called: str = NODE_AE) -> tuple[int, ...]:
    """Associate and C-ECHO with pynetdicom as the caller: ``(status,)`` when accepted,
    else the A-ASSOCIATE-RJ ``(result, source, diagnostic)``."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    d = listener(c)
    assoc = ae.associate(d["host"], d["port"], ae_title=called)
    if not assoc.is_established:
        assert assoc.is_rejected
        rj: Any = assoc.acceptor.primitive
        return rj.result, rj.result_source, rj.diagnostic
    try:
        return (int(assoc.send_c_echo().Status),)
    finally:
        assoc.release()


def test_pynetdicom_caller_and_restart(consortium: Consortium) -> None:
    c = consortium
    modality = c.enroll("us-modality", "service")
    assert pynetdicom_echo(c, "US_1") == (1, 1, 3)  # calling AE title not recognised
    with c.admin() as admin:
        assert admin.dicom_allow("US_1", modality.id)["created"] is True
    path = c.home / "dicom" / "allowed_aes.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {e["ae_title"]: e["identity"] for e in json.loads(path.read_text())["allowed"]}[
        "US_1"
    ] == modality.id

    assert pynetdicom_echo(c, "US_1") == (0x0000,)
    wait_event(c, "dicom.echo", calling_ae="US_1", identity=modality.id)
    assert pynetdicom_echo(c, "US_1", called="HOSPITAL-Z") == (1, 1, 7)  # called AE title
    assert pynetdicom_echo(c, "US_2") == (1, 1, 3)

    # the node stops its listener cleanly; the list survives, the listener comes back
    d = listener(c)
    c.down()
    wait_event(c, "dicom.stopped", ae_title=NODE_AE)
    c.up()
    assert c.status()["nodes"][0]["dicom"] == d
    assert "US_1" in allowed_titles(c)
    assert pynetdicom_echo(c, "US_1") == (0x0000,)

    # suspension shuts it out, as for dcmtk
    with c.admin() as admin:
        admin.suspend(modality.id, "decommissioned")
    assert pynetdicom_echo(c, "US_1") == (1, 1, 3)
    wait_event(c, "dicom.association_rejected", calling_ae="US_1", reason="identity_suspended")


def api_error(call: Any) -> str:
    """The error code of a client call that must fail."""
    with pytest.raises(MedLedgerError) as exc:
        call()
    return exc.value.code


def test_who_may_change_the_allow_list(consortium: Consortium) -> None:
    c = consortium
    modality = c.enroll("modality", "service")
    clinician = c.enroll("clinician", "clinician")

    # only an admin of the node's institution (the CLI once, then the client it uses)
    assert_cli_error(allow(c, "MR_1", modality.id, clinician.key_file), "NOT_AUTHORIZED")
    for who in (modality, clinician):
        with c.client(who) as cl:
            assert api_error(lambda cl=cl: cl.dicom_allow("MR_1", modality.id)) == "NOT_AUTHORIZED"
            assert api_error(cl.dicom_allowed_aes) == "NOT_AUTHORIZED"
            assert api_error(lambda cl=cl: cl.dicom_deny("MR_1")) == "NOT_AUTHORIZED"

    # what may be allowed
    assert_cli_error(allow(c, "THIS-IS-17-CHARS!", modality.id), "BAD_AE_TITLE")
    assert_cli_error(allow(c, "MR_1", clinician.id), "NOT_A_SERVICE")
    with c.admin() as admin:
        for title in ("BACK\\SLASH", " LEADING", "TRAILING ", "CAFÉ", "", "TAB\t"):
            assert api_error(lambda t=title: admin.dicom_allow(t, modality.id)) == "BAD_AE_TITLE"
        for ident, code in (
            (c.inst["admin_id"], "NOT_A_SERVICE"),
            (c.new_key("stranger").id, "UNKNOWN_IDENTITY"),
            ("not-an-id", "BAD_IDENTITY_ID"),
        ):
            assert api_error(lambda i=ident: admin.dicom_allow("MR_1", i)) == code
        assert api_error(lambda: admin.dicom_deny("BACK\\SLASH")) == "BAD_AE_TITLE"
    assert "MR_1" not in allowed_titles(c)

    # a title with characters that URLs escape; allowed twice (no change); one identity only
    title = "MR 1/B.2?#%"
    assert allow(c, title, modality.id).json()["created"] is True
    assert allow(c, title, modality.id).json()["created"] is False
    other = c.enroll("other-service", "service")
    assert_cli_error(allow(c, title, other.id), "AE_TITLE_IN_USE")
    assert title in allowed_titles(c)
    cli_json("dicom", "deny", title, "--node", c.api, "--as", c.admin_key_file)
    assert title not in allowed_titles(c)
    r = run_cli("dicom", "deny", title, "--node", c.api, "--as", c.admin_key_file)
    assert_cli_error(r, "AE_TITLE_NOT_FOUND")
    with c.admin() as admin:
        assert api_error(lambda: admin.dicom_deny("..")) == "AE_TITLE_NOT_FOUND"

    # a body that is not {"ae_title", "identity"}; an unsigned request
    with c.http() as http:
        path = "/api/v1/dicom/allowed-aes"
        for body in (b"[]", b'{"ae_title": "MR_1"}', b'{"ae_title": 1, "identity": "x"}', b"{"):
            headers = signed_headers(c.admin_key, "POST", path, body)
            expect_error(http.post(path, content=body, headers=headers), 400, "BAD_REQUEST")
        expect_error(http.get(path), 401, "AUTH_REQUIRED")

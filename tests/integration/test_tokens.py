"""Bearer tokens against a real node: ``medledger token issue``, and reads the node's
gateway commits for a token's identity, decided and recorded as that identity, with
the custodians re-checking the policy for it before they release key shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medledger.app import delegation
from medledger.crypto.keys import load_key_file
from medledger.errors import Forbidden, MedLedgerError

from .harness import Consortium, assert_cli_error, cli_json, run_cli, running_consortium
from .test_dicom_scp import listener


class Setup:
    def __init__(self, c: Consortium, tmp: Path) -> None:
        self.c = c
        self.gateway_id = str(listener(c)["gateway_id"])
        with c.admin() as admin:
            assert admin.enroll(self.gateway_id, "service")["code"] == "OK"
        self.gateway = load_key_file(c.home / "dicom" / "gateway.key")
        self.patient = c.enroll("patient", "patient")
        self.author = c.enroll("author", "clinician")
        self.reader = c.enroll("reader", "clinician")
        self.content = b"discharge letter " * 500
        src = tmp / "letter.txt"
        src.write_bytes(self.content)
        with c.client(self.author) as author:
            self.record_id = author.put_record(src, patient=self.patient.id).record_id


@pytest.fixture(scope="module")
def s(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_consortium(tmp_path_factory.mktemp("tokens")) as c:
        yield Setup(c, tmp_path_factory.mktemp("tokens-files"))


def issue(s: Setup, who: Any, *extra: str) -> str:
    doc = cli_json("token", "issue", "--node", s.c.api, "--as", who.key_file, "--json", *extra)
    assert doc["identity"] == who.id
    return str(doc["token"])


def gateway_read(s: Setup, token: str, out: Path) -> dict[str, Any]:
    with s.c.client(s.gateway) as gw:
        return gw.get_record(s.record_id, out, delegation=delegation.token_bytes(token))


def trail(s: Setup) -> list[dict[str, Any]]:
    with s.c.client(s.patient) as patient:
        return patient.audit(s.patient.id)


def test_the_gateway_reads_for_a_token_only_what_its_identity_may(s: Setup, tmp_path: Path) -> None:
    token = issue(s, s.reader, "--ttl", "10m")
    with pytest.raises(Forbidden) as err:
        gateway_read(s, token, tmp_path / "denied")
    assert err.value.code == "ACCESS_DENIED"
    assert not (tmp_path / "denied").exists()
    denied = [e for e in trail(s) if e["outcome"] == "denied"][-1]
    assert denied["actor"] == s.reader.id and f"via={s.gateway_id}" in denied["detail"]

    with s.c.admin() as admin:
        admin.start_care(s.patient.id, s.reader.id)
    doc = gateway_read(s, token, tmp_path / "allowed")
    assert (tmp_path / "allowed").read_bytes() == s.content
    allowed = [e for e in trail(s) if e["outcome"] == "allowed"][-1]
    assert allowed["actor"] == s.reader.id and allowed["tx_hash"] == doc["access_tx"]

    # the custodians re-check for the reader: care ended, the same access event
    # no longer releases a share
    with s.c.admin() as admin:
        admin.end_care(s.patient.id, s.reader.id)
    with s.c.client(s.gateway) as gw, pytest.raises(MedLedgerError) as err:
        gw.release_key(s.record_id, doc["access_tx"])
    assert err.value.code in ("ACCESS_DENIED", "CUSTODY_THRESHOLD_UNREACHED"), err.value


def test_only_the_named_gateway_can_use_a_token(s: Setup, tmp_path: Path) -> None:
    token = issue(s, s.reader)
    # refused at admission: nothing is committed
    with s.c.client(s.author) as other, pytest.raises(MedLedgerError) as err:
        other.get_record(s.record_id, tmp_path / "x", delegation=delegation.token_bytes(token))
    assert err.value.code == "TOKEN_WRONG_NODE"


def test_a_token_cannot_outgrow_its_scope(s: Setup, tmp_path: Path) -> None:
    from medledger.app.model import GRANT_CONSENT, GrantConsentBody

    token = issue(s, s.patient)  # scope read only
    body = GrantConsentBody(
        patient=s.patient.id,
        actor_kind="identity",
        actor=s.reader.id,
        purposes=["treatment"],
        record_ids=[],
        types=[],
        start_ms=0,
        end_ms=0,
        permit=True,
        delegation=delegation.token_bytes(token),
    )
    with s.c.client(s.gateway) as gw, pytest.raises(MedLedgerError) as err:
        gw.submit(GRANT_CONSENT, body)
    assert err.value.code == "TOKEN_SCOPE"
    with s.c.client(s.patient) as patient:
        assert patient.consents(s.patient.id) == []


def test_token_issue_refuses_bad_requests(s: Setup) -> None:
    args = ("token", "issue", "--node", s.c.api, "--as", str(s.reader.key_file))
    assert_cli_error(run_cli(*args, "--ttl", "48h"), "TOKEN_LIFETIME")
    assert_cli_error(run_cli(*args, "--ttl", "soon"), "BAD_TTL")
    assert_cli_error(run_cli(*args, "--scope", "admin"), "TOKEN_SCOPE")
    r = run_cli(*args)
    assert r.code == 0 and r.out.strip().startswith(delegation.TOKEN_PREFIX), r.err

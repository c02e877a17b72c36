"""Consent, care, break-glass, audit and erasure across a real 4-institution consortium.

Everything goes through the ``medledger`` CLI (as a hospital's staff would use
it) against real node processes: a clinician of another institution is denied,
gets access after the patient's consent and is denied again in the block after
revocation; care relationships are admitted locally and by consented referral;
break-glass reads succeed and show up in the patient's audit trail and the
regulator's alerts; audit proofs verify offline and fail when tampered with;
after erasure nobody reads the record.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medledger.client import Client

from .harness import Consortium, Identity, assert_cli_error, cli_json, run_cli
from .test_consortium import api, enroll_as, home
from .test_erasure_storage import running_quad


@pytest.fixture(scope="module")
def quad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    with running_quad(tmp_path_factory.mktemp("policies")) as c:
        yield c


class Cast:
    def __init__(self, c: Consortium) -> None:
        self.c = c
        self.doc_a = enroll_as(c, "hospital-a", "hospital-a", "doc-a", "clinician")
        self.doc_b = enroll_as(c, "hospital-b", "hospital-b", "doc-b", "clinician")
        self.doc_c = enroll_as(c, "hospital-c", "hospital-c", "doc-c", "clinician")
        self.patient = enroll_as(c, "hospital-a", "hospital-a", "patient", "patient")
        self.regulator = enroll_as(c, "hospital-d", "hospital-d", "regulator", "regulator")
        self.admin_b = home(c, "hospital-b") / "admin.key"
        self.admin_a = home(c, "hospital-a") / "admin.key"


@pytest.fixture(scope="module")
def cast(quad: Consortium) -> Cast:
    return Cast(quad)


def as_(c: Consortium, via: str, key: Path | Identity) -> list[str | Path]:
    key_file = key.key_file if isinstance(key, Identity) else key
    return ["--node", api(c, via), "--as", key_file]


def put(c: Consortium, cast: Cast, data: bytes, record_type: str = "note") -> str:
    src = c.work / f"src-{os.urandom(4).hex()}.bin"
    src.write_bytes(data)
    doc = cli_json(
        "record", "put", src, "--patient", cast.patient.id, "--type", record_type,
        *as_(c, "hospital-a", cast.doc_a),
    )  # fmt: skip
    return str(doc["record_id"])


def get(
    c: Consortium, via: str, who: Identity, record_id: str, *extra: str
) -> tuple[Any, bytes | None]:
    """(CLI result, content read or None)."""
    out = c.work / f"get-{os.urandom(4).hex()}.bin"
    r = run_cli("record", "get", record_id, "--out", out, *extra, "--json", *as_(c, via, who))
    return r, (out.read_bytes() if r.code == 0 else None)


def assert_denied(r: Any, rule: str) -> None:
    assert_cli_error(r, "ACCESS_DENIED")
    assert rule in r.err, r.err


def audit_of(c: Consortium, cast: Cast) -> list[dict[str, Any]]:
    doc = cli_json("audit", "--patient", cast.patient.id, *as_(c, "hospital-c", cast.patient))
    return list(doc["events"])


def test_consent_grants_then_revocation_denies_from_the_next_block(
    quad: Consortium, cast: Cast
) -> None:
    data = os.urandom(100_000)
    rid = put(quad, cast, data)
    r, _ = get(quad, "hospital-b", cast.doc_b, rid)
    assert_denied(r, "not_in_care")

    granted = cli_json(
        "consent", "grant", "--to", cast.doc_b.id, "--purpose", "treatment",
        "--records", rid, "--until", "2099-12-31", *as_(quad, "hospital-a", cast.patient),
    )  # fmt: skip
    consent_id = granted["consent_id"]
    assert consent_id.startswith("c")
    listed = cli_json("consent", "ls", *as_(quad, "hospital-b", cast.patient))["consents"]
    assert [x["consent_id"] for x in listed] == [consent_id]
    assert listed[0]["record_ids"] == [rid] and listed[0]["provision"] == "permit"

    r, got = get(quad, "hospital-b", cast.doc_b, rid)
    assert r.code == 0, r.err
    assert got == data
    # the consent also shows the grantee the record's metadata
    shown = cli_json("record", "show", rid, *as_(quad, "hospital-b", cast.doc_b))
    assert (shown["record_id"], shown["type"]) == (rid, "note")

    revoked = cli_json("consent", "revoke", consent_id, *as_(quad, "hospital-a", cast.patient))
    r, got = get(quad, "hospital-b", cast.doc_b, rid)
    assert_denied(r, "not_in_care")
    assert got is None
    assert cli_json("consent", "ls", *as_(quad, "hospital-a", cast.patient))["consents"] == []
    r = run_cli("record", "show", rid, "--json", *as_(quad, "hospital-b", cast.doc_b))
    assert_cli_error(r, "ACCESS_DENIED")
    # the denial is in a later block than the revocation, and on the patient's trail
    events = audit_of(quad, cast)
    revoke_ev = next(e for e in events if e["action"] == "consent.revoke")
    assert revoke_ev["height"] == revoked["height"]
    reads_b = [e for e in events if e["actor"] == cast.doc_b.id and e["record_id"] == rid]
    assert [e["outcome"] for e in reads_b] == ["denied", "allowed", "denied"]
    assert reads_b[-1]["height"] > revoked["height"]
    # revoking twice, or someone else's consent, is refused with its code
    r = run_cli("consent", "revoke", consent_id, *as_(quad, "hospital-a", cast.patient))
    assert_cli_error(r, "CONSENT_INACTIVE")


def test_care_admission_referral_and_end(quad: Consortium, cast: Cast) -> None:
    data = os.urandom(5_000)
    rid = put(quad, cast, data, "lab")
    # the patient is registered at hospital-a: hospital-b's admin needs a referral consent
    r = run_cli(
        "care", "start", "--patient", cast.patient.id, "--clinician", cast.doc_b.id,
        *as_(quad, "hospital-b", cast.admin_b),
    )  # fmt: skip
    assert_cli_error(r, "NOT_AUTHORIZED")
    assert "referral_needs_consent" in r.err
    cli_json(
        "consent", "grant", "--to", "hospital-b", "--purpose", "referral",
        *as_(quad, "hospital-a", cast.patient),
    )  # fmt: skip
    cli_json(
        "care", "start", "--patient", cast.patient.id, "--clinician", cast.doc_b.id,
        "--kind", "referral", *as_(quad, "hospital-b", cast.admin_b),
    )  # fmt: skip
    rels = cli_json(
        "care", "ls", "--patient", cast.patient.id, *as_(quad, "hospital-a", cast.patient)
    )
    assert [(x["clinician"], x["kind"]) for x in rels["relationships"]] == [
        (cast.doc_b.id, "referral")
    ]
    r, got = get(quad, "hospital-b", cast.doc_b, rid)
    assert r.code == 0, r.err
    assert got == data
    cli_json(
        "care", "end", "--patient", cast.patient.id, "--clinician", cast.doc_b.id,
        *as_(quad, "hospital-b", cast.admin_b),
    )  # fmt: skip
    r, _ = get(quad, "hospital-b", cast.doc_b, rid)
    assert_denied(r, "not_in_care")


def test_break_glass_is_allowed_flagged_to_patient_and_regulator(
    quad: Consortium, cast: Cast
) -> None:
    data = os.urandom(20_000)
    rid = put(quad, cast, data)
    r, _ = get(quad, "hospital-c", cast.doc_c, rid, "--break-glass")
    assert_cli_error(r, "REASON_REQUIRED")
    reason = "unconscious in the emergency room"
    r, got = get(quad, "hospital-c", cast.doc_c, rid, "--break-glass", "--reason", reason)
    assert r.code == 0, r.err
    assert got == data
    height = r.json()["height"]
    events = audit_of(quad, cast)
    glass = [e for e in events if e["action"] == "break_glass"]
    assert len(glass) == 1
    assert glass[0]["actor"] == cast.doc_c.id and glass[0]["record_id"] == rid
    assert glass[0]["outcome"] == "allowed" and reason in glass[0]["detail"]
    # a regulator cannot break the glass (nor read content at all)
    r, _ = get(quad, "hospital-d", cast.regulator, rid, "--break-glass", "--reason", "curious")
    assert_denied(r, "regulator_no_content")

    alerts = cli_json("regulator", "alerts", *as_(quad, "hospital-d", cast.regulator))["alerts"]
    mine = [a for a in alerts if a["record_id"] == rid]
    assert {
        "kind": "break_glass",
        "actor": cast.doc_c.id,
        "record_id": rid,
        "height": height,
    }.items() <= next(a for a in mine if a["kind"] == "break_glass").items()
    denied = [a for a in mine if a["kind"] == "denied_access"]
    assert [a["actor"] for a in denied] == [cast.regulator.id]
    for a in alerts:
        assert {"kind", "actor", "record_id", "height"} <= a.keys()
    # only regulators see the alert feed
    r = run_cli("regulator", "alerts", "--json", *as_(quad, "hospital-a", cast.patient))
    assert_cli_error(r, "ACCESS_DENIED")
    stats = cli_json("regulator", "stats", *as_(quad, "hospital-d", cast.regulator))
    assert stats  # counts per institution, type and purpose (shape checked in unit tests)


def test_audit_proof_verifies_and_tampering_fails(quad: Consortium, cast: Cast) -> None:
    proof = quad.work / "patient-audit.proof"
    cli_json(
        "audit", "--patient", cast.patient.id, "--proof-out", proof,
        *as_(quad, "hospital-b", cast.patient),
    )  # fmt: skip
    genesis = home(quad, "hospital-a") / "genesis.json"
    ok = cli_json("proof", "verify", proof, "--genesis", genesis)
    assert ok["valid"] is True and ok["validators_pinned"] is True
    actions = {e["action"] for e in ok["events"]}
    assert {"write", "read", "consent.grant", "consent.revoke", "break_glass"} <= actions
    raw = bytearray(proof.read_bytes())
    detail = b"unconscious"
    at = raw.find(detail)
    assert at > 0
    raw[at] ^= 0x20
    bad = quad.work / "tampered.proof"
    bad.write_bytes(bytes(raw))
    r = run_cli("proof", "verify", bad, "--genesis", genesis, "--json")
    assert r.code == 1 and "error:" in r.err
    # a window of the trail
    every = audit_of(quad, cast)
    since = every[len(every) // 2]["height"]
    window = cli_json(
        "audit", "--patient", cast.patient.id, "--since-height", str(since), "--limit", "2",
        *as_(quad, "hospital-b", cast.patient),
    )["events"]  # fmt: skip
    assert window == [e for e in every if e["height"] >= since][:2]
    # someone else's trail is not theirs to read
    r = run_cli(
        "audit", "--patient", cast.patient.id, "--json", *as_(quad, "hospital-b", cast.doc_b)
    )
    assert_cli_error(r, "ACCESS_DENIED")


def test_after_erasure_nobody_reads_the_record(quad: Consortium, cast: Cast) -> None:
    data = os.urandom(30_000)
    rid = put(quad, cast, data)
    r = run_cli("erasure", "approve", rid, "--json", *as_(quad, "hospital-a", cast.admin_a))
    assert_cli_error(r, "NO_ERASURE_REQUEST")
    cli_json(
        "erasure", "request", rid, "--reason", "withdrawn from the study",
        *as_(quad, "hospital-a", cast.patient),
    )  # fmt: skip
    # only a regulator or an admin of the record's institution co-signs
    r = run_cli("erasure", "approve", rid, "--json", *as_(quad, "hospital-b", cast.admin_b))
    assert_cli_error(r, "NOT_AUTHORIZED")
    cli_json("erasure", "approve", rid, *as_(quad, "hospital-d", cast.regulator))
    for who, via in ((cast.patient, "hospital-a"), (cast.doc_a, "hospital-b")):
        r, got = get(quad, via, who, rid)
        assert_denied(r, "record_erased")
        assert got is None
    r, _ = get(quad, "hospital-c", cast.doc_c, rid, "--break-glass", "--reason", "emergency")
    assert_denied(r, "record_erased")
    actions = [e["action"] for e in audit_of(quad, cast) if e["record_id"] == rid]
    assert actions[:3] == ["write", "erase.request", "erase"]


def test_many_reads_through_one_node_keep_working(quad: Consortium, cast: Cast) -> None:
    # regression: every read used to leave one pooled connection to a remote shard service
    # checked out, so the 17th read through a node waited out the 60 s pool timeout
    data = os.urandom(10_000)
    rid = put(quad, cast, data)
    out = quad.work / "many-reads.bin"
    with Client(api(quad, "hospital-b"), cast.patient.key, timeout=20.0) as cl:
        for _ in range(24):
            cl.get_record(rid, out, purpose="patient-access")
            assert out.read_bytes() == data

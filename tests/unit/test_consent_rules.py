"""Consent, care relationships, proxies, break-glass and erasure, through the Application.

Every test drives committed blocks (``mlhelpers.Chain``) so what is checked is what a
node commits: results, events, and the state a later block decides against.
"""

from __future__ import annotations

from typing import Any

import pytest
from mlhelpers import GENESIS_TIME_MS, Chain, World, grant_body, key, make_genesis

from medledger.app.consents import MAX_ACTIVE_CONSENTS
from medledger.app.model import (
    ALERT_BREAK_GLASS,
    ALERT_DENIED,
    ALERT_ERASURE,
    ALERT_SPIKE,
    CONSENT_ACTIVE,
    CONSENT_INACTIVE,
    END_CARE,
    ERASE_APPROVE,
    ERASE_REQUEST,
    GRANT_CONSENT,
    READ_RECORD,
    REGULATOR_SUBJECT,
    REVOKE_CONSENT,
    SET_PROXY,
    START_CARE,
    STATS_PREFIX,
    SUSPEND,
    CareBody,
    CareRelation,
    Consent,
    ConsentList,
    EraseApproveBody,
    EraseRequestBody,
    ReadRecordBody,
    RevokeConsentBody,
    SetProxyBody,
    SuspendBody,
    consent_id_for,
    k_care,
    k_consent,
    k_erase_request,
    k_nonce,
    k_patient_consents,
    k_proxies,
    k_stats,
)
from medledger.codec import decode
from medledger.errors import MedLedgerError
from medledger.ledger.block import Event, TxResult
from medledger.ledger.genesis import ChainParams
from medledger.ledger.tx import SignedTx

# ---- helpers --------------------------------------------------------------------------------


def ident(w: World, name: str) -> str:
    """``alpha.clinician`` -> that identity's ID; a bare institution name stays itself."""
    return w[name].id if "." in name else name


def grant_tx(
    w: World,
    signer: str,
    actor: str,
    purposes: tuple[str, ...] | list[str] = ("treatment",),
    *,
    patient: str = "alpha.patient",
    **kw: Any,
) -> SignedTx:
    if "." not in actor:
        kw.setdefault("kind", "institution")
    body = grant_body(ident(w, patient), ident(w, actor), purposes, **kw)
    return w.chain.tx(w[signer], GRANT_CONSENT, body)


def grant(
    w: World,
    actor: str,
    purposes: tuple[str, ...] | list[str] = ("treatment",),
    *,
    signer: str = "alpha.patient",
    **kw: Any,
) -> str:
    """A consent granted (in a block of its own); its ID."""
    stx = grant_tx(w, signer, actor, purposes, **kw)
    res = w.chain.block([stx]).results[0]
    assert res.ok, res
    assert res.data["consent_id"] == consent_id_for(stx.hash)
    return res.data["consent_id"]


def revoke_tx(w: World, consent_id: str, signer: str = "alpha.patient") -> SignedTx:
    return w.chain.tx(w[signer], REVOKE_CONSENT, RevokeConsentBody(consent_id=consent_id))


def read_tx(w: World, reader: str, record_id: str | None = None, purpose: str = "treatment") -> Any:
    body = ReadRecordBody(record_id=record_id or w.record_id, purpose=purpose)
    return w.chain.tx(w[reader], READ_RECORD, body)


def read(
    w: World, reader: str, record_id: str | None = None, purpose: str = "treatment"
) -> TxResult:
    return w.chain.read(w[reader], record_id or w.record_id, purpose)


def rule(res: TxResult) -> str:
    """The read's rule; checks that the code matches the outcome."""
    assert res.code in ("OK", "ACCESS_DENIED"), res
    assert res.data["outcome"] == ("allowed" if res.ok else "denied")
    return res.data["rule"]


def care(w: World, signer: str, clinician: str, patient: str = "alpha.patient") -> TxResult:
    body = CareBody(patient=w[patient].id, clinician=w[clinician].id, kind="admission")
    return w.chain.run(w[signer], START_CARE, body)


def end_care(w: World, signer: str, clinician: str, patient: str = "alpha.patient") -> TxResult:
    body = CareBody(patient=w[patient].id, clinician=w[clinician].id, kind="admission")
    return w.chain.run(w[signer], END_CARE, body)


def set_proxy(w: World, patient: str, proxy: str, active: bool = True) -> TxResult:
    return w.chain.run(w[patient], SET_PROXY, SetProxyBody(proxy=w[proxy].id, active=active))


def alerts(res: TxResult) -> list[Event]:
    return [e for e in res.events if e.subject == REGULATOR_SUBJECT]


def expect_refused(chain: Chain, stx: SignedTx, code: str) -> TxResult:
    """Refused by check_tx and by the block with ``code``; only the nonce moved."""
    with pytest.raises(MedLedgerError) as exc:
        chain.check(stx)
    assert exc.value.code == code, exc.value
    before = dict(chain.state)
    res = chain.block([stx]).results[0]
    assert res.code == code, res
    assert res.events == [] and res.data == {}
    changed = {k for k in set(before) | set(chain.state) if before.get(k) != chain.state.get(k)}
    assert changed == {k_nonce(stx.tx.sender)}
    return res


def counter(chain: Chain, key_: bytes) -> int:
    raw = chain.state.get(key_)
    return 0 if raw is None else int.from_bytes(raw, "big")


# ---- grant and revoke ------------------------------------------------------------------------


def test_grant_lets_a_clinician_of_another_institution_read(world: World) -> None:
    w, chain = world, world.chain
    assert rule(read(w, "beta.clinician")) == "not_in_care"
    stx = grant_tx(w, "alpha.patient", "beta.clinician")
    chain.check(stx)
    res = chain.block([stx]).results[0]
    assert res.ok
    cid = consent_id_for(stx.hash)
    assert res.data == {"consent_id": cid, "patient": w["alpha.patient"].id}
    [ev] = res.events
    assert (ev.action, ev.actor, ev.subject, ev.outcome) == (
        "consent.grant",
        w["alpha.patient"].id,
        w["alpha.patient"].id,
        "ok",
    )
    assert f"consent={cid} permit identity={w['beta.clinician'].id}" in ev.detail
    consent = decode(chain.state[k_consent(cid)], Consent)
    assert (consent.status, consent.grantor, consent.height, consent.revoked_height) == (
        CONSENT_ACTIVE,
        w["alpha.patient"].id,
        chain.height,
        0,
    )
    assert decode(chain.state[k_patient_consents(w["alpha.patient"].id)], ConsentList).ids == [cid]
    res = read(w, "beta.clinician")
    assert res.ok and rule(res) == "consent"
    # an identity consent is personal: a colleague is not covered
    assert rule(read(w, "beta.clinician2")) == "not_in_care"


def test_revoke_denies_from_the_next_block(world: World) -> None:
    w, chain = world, world.chain
    cid = grant(w, "beta.clinician")
    assert read(w, "beta.clinician").ok
    stx = revoke_tx(w, cid)
    chain.check(stx)
    res = chain.block([stx]).results[0]
    assert res.ok and res.data == {"consent_id": cid, "patient": w["alpha.patient"].id}
    assert [(e.action, e.detail) for e in res.events] == [("consent.revoke", f"consent={cid}")]
    consent = decode(chain.state[k_consent(cid)], Consent)
    assert (consent.status, consent.revoked_height) == (CONSENT_INACTIVE, chain.height)
    assert decode(chain.state[k_patient_consents(w["alpha.patient"].id)], ConsentList).ids == []
    assert rule(read(w, "beta.clinician")) == "not_in_care"
    # the custodians' re-check against committed state agrees
    reader = chain.app.query_identity(w["beta.clinician"].id)
    assert reader is not None
    body = ReadRecordBody(record_id=w.record_id, purpose="treatment")
    assert not chain.app.evaluate_read(reader, body, chain.time_ms).allowed
    # revoking again, or a consent that does not exist
    expect_refused(chain, revoke_tx(w, cid), "CONSENT_INACTIVE")
    expect_refused(chain, revoke_tx(w, "c" + "0" * 32), "CONSENT_NOT_FOUND")
    expect_refused(chain, revoke_tx(w, "not-a-consent"), "CONSENT_NOT_FOUND")


def test_revoke_and_read_in_one_block_follow_block_order(world: World) -> None:
    w, chain = world, world.chain
    cid = grant(w, "beta.clinician")
    # revoke first: the read later in the same block is denied
    fin = chain.block([revoke_tx(w, cid), read_tx(w, "beta.clinician")])
    assert fin.results[0].ok and rule(fin.results[1]) == "not_in_care"
    # read first: it executes before the revocation and is allowed
    cid = grant(w, "beta.clinician")
    fin = chain.block([read_tx(w, "beta.clinician"), revoke_tx(w, cid)])
    assert rule(fin.results[0]) == "consent" and fin.results[1].ok
    assert rule(read(w, "beta.clinician")) == "not_in_care"


def test_only_the_patient_or_proxy_grants_and_revokes(world: World) -> None:
    w, chain = world, world.chain
    for signer in ("alpha.clinician", "alpha.admin", "alpha.patient2", "beta.clinician"):
        expect_refused(chain, grant_tx(w, signer, signer), "NOT_AUTHORIZED")
    cid = grant(w, "beta.clinician")
    for signer in ("beta.clinician", "alpha.admin", "alpha.regulator", "alpha.patient2"):
        expect_refused(chain, revoke_tx(w, cid, signer), "NOT_AUTHORIZED")
    assert read(w, "beta.clinician").ok


def test_deny_provision_beats_a_permit(world: World) -> None:
    w = world
    grant(w, "beta", ["referral", "treatment"])  # the whole institution
    grant(w, "beta.clinician", ["treatment"], permit=False)
    res = read(w, "beta.clinician")
    assert rule(res) == "consent_denies"
    assert "denies this access" in res.message
    assert rule(read(w, "beta.clinician", purpose="referral")) == "consent"  # not denied
    assert rule(read(w, "beta.clinician2")) == "consent"
    # a deny of a whole institution beats even authorship, care and own-institution services
    grant(w, "alpha", ["treatment"], permit=False)
    assert care(w, "alpha.admin", "alpha.clinician2").ok
    for reader in ("alpha.clinician", "alpha.clinician2", "alpha.service"):
        assert rule(read(w, reader)) == "consent_denies", reader
    # ... but not the patient
    assert read(w, "alpha.patient", purpose="treatment").ok


def test_consent_limited_to_record_ids(world: World) -> None:
    w = world
    other = w.chain.register(w["alpha.clinician"], w["alpha.patient"], type="lab")
    other_id = other.data["record_id"]
    grant(w, "beta.clinician", record_ids=[other_id])
    assert rule(read(w, "beta.clinician", other_id)) == "consent"
    assert rule(read(w, "beta.clinician")) == "not_in_care"


def test_consent_limited_to_types(world: World) -> None:
    w = world
    lab = w.chain.register(w["alpha.clinician"], w["alpha.patient"], type="lab").data["record_id"]
    grant(w, "beta.clinician", types=["lab", "note"])
    assert rule(read(w, "beta.clinician", lab)) == "consent"
    assert rule(read(w, "beta.clinician")) == "not_in_care"  # imaging.ct


def test_consent_limited_to_purposes(world: World) -> None:
    w = world
    grant(w, "beta.clinician", ["referral"])
    assert rule(read(w, "beta.clinician", purpose="referral")) == "consent"
    assert rule(read(w, "beta.clinician", purpose="treatment")) == "not_in_care"


def test_consent_period_by_block_time(world: World) -> None:
    w, chain = world, world.chain
    t = chain.time_ms  # blocks come every 1000 ms of block time
    grant(w, "beta.clinician", start_ms=t + 3000, end_ms=t + 5000)  # block at t+1000
    assert rule(read(w, "beta.clinician")) == "not_in_care"  # t+2000: before the start
    assert rule(read(w, "beta.clinician")) == "consent"  # t+3000: the start is inclusive
    assert rule(read(w, "beta.clinician")) == "consent"  # t+4000
    assert chain.time_ms == t + 4000
    assert rule(read(w, "beta.clinician")) == "not_in_care"  # t+5000: the end is exclusive
    # an expired consent still occupies the active list until revoked
    assert len(decode(chain.state[k_patient_consents(w["alpha.patient"].id)], ConsentList).ids) == 1


def test_consent_to_a_whole_institution(world: World) -> None:
    w = world
    grant(w, "beta", ["treatment"])
    for reader in ("beta.clinician", "beta.clinician2"):
        assert rule(read(w, reader)) == "consent", reader
    assert rule(read(w, "alpha.clinician2")) == "not_in_care"  # another institution
    # services read their own institution's records only, consent or not
    assert rule(read(w, "beta.service")) == "other_institution"


# ---- care relationships ------------------------------------------------------------------------


def test_care_start_by_own_admin_allows_treatment_reads(world: World) -> None:
    w, chain = world, world.chain
    doc2, patient = w["alpha.clinician2"], w["alpha.patient"]
    assert rule(read(w, "alpha.clinician2")) == "not_in_care"
    res = care(w, "alpha.admin", "alpha.clinician2")
    assert res.ok and res.data == {"patient": patient.id}
    [ev] = res.events
    assert (ev.action, ev.actor, ev.subject) == ("care.start", w["alpha.admin"].id, patient.id)
    assert "rule=admission" in ev.detail
    relation = decode(chain.state[k_care(patient.id, doc2.id)], CareRelation)
    assert (relation.institution, relation.started_by) == ("alpha", w["alpha.admin"].id)
    assert rule(read(w, "alpha.clinician2")) == "care_relationship"
    assert rule(read(w, "alpha.clinician2", purpose="referral")) == "care_relationship"
    assert rule(read(w, "alpha.clinician2", purpose="research")) == "not_in_care"
    assert care(w, "alpha.admin2", "alpha.clinician2").code == "ALREADY_IN_CARE"
    # care.end: by an admin of the clinician's institution only
    assert end_care(w, "beta.admin", "alpha.clinician2").code == "NOT_AUTHORIZED"
    assert end_care(w, "alpha.clinician2", "alpha.clinician2").code == "NOT_AUTHORIZED"
    res = end_care(w, "alpha.admin2", "alpha.clinician2")
    assert res.ok and [e.action for e in res.events] == ["care.end"]
    assert k_care(patient.id, doc2.id) not in chain.state
    assert rule(read(w, "alpha.clinician2")) == "not_in_care"
    assert end_care(w, "alpha.admin", "alpha.clinician2").code == "NOT_IN_CARE"


def test_care_start_for_another_institutions_patient_needs_consent(world: World) -> None:
    w, chain = world, world.chain
    res = care(w, "beta.admin", "beta.clinician")
    assert res.code == "NOT_AUTHORIZED" and "referral_needs_consent" in res.message
    # consents that do not cover "any record, for referral or treatment" do not admit it
    grant(w, "beta", ["research"])
    grant(w, "beta", ["treatment"], types=["lab"])
    grant(w, "beta.clinician", ["referral"], permit=False)
    assert "referral_needs_consent" in care(w, "beta.admin", "beta.clinician").message
    # a referral consent to the institution does
    grant(w, "beta", ["referral"])
    res = care(w, "beta.admin", "beta.clinician")
    assert res.ok and "rule=referral" in res.events[0].detail
    assert k_care(w["alpha.patient"].id, w["beta.clinician"].id) in chain.state


def test_care_start_with_a_treatment_consent_to_the_clinician(world: World) -> None:
    w = world
    assert care(w, "beta.admin", "beta.clinician2").code == "NOT_AUTHORIZED"
    grant(w, "beta.clinician2", ["treatment"])
    assert care(w, "beta.admin", "beta.clinician2").ok
    assert care(w, "beta.admin", "beta.clinician").code == "NOT_AUTHORIZED"  # not them


def test_care_start_refused_for_non_admins_and_other_admins(world: World) -> None:
    w, chain = world, world.chain
    for signer in ("alpha.clinician", "alpha.clinician2", "alpha.patient", "alpha.regulator"):
        assert care(w, signer, "alpha.clinician2").code == "NOT_AUTHORIZED", signer
    # an admin of another institution, even with the patient's consent to it
    grant(w, "beta", ["referral", "treatment"])
    assert care(w, "beta.admin", "alpha.clinician2").code == "NOT_AUTHORIZED"
    # care is for active clinicians and enrolled patients
    assert "not_a_clinician" in care(w, "alpha.admin", "alpha.service").message
    assert care(w, "alpha.admin", "alpha.clinician2", patient="alpha.service").code == (
        "UNKNOWN_PATIENT"
    )
    bad_kind = CareBody(
        patient=w["alpha.patient"].id, clinician=w["alpha.clinician2"].id, kind="vacation"
    )
    expect_refused(chain, chain.tx(w["alpha.admin"], START_CARE, bad_kind), "TX_MALFORMED")
    ghost = CareBody(patient=w["alpha.patient"].id, clinician=key("ghost").id, kind="admission")
    expect_refused(chain, chain.tx(w["alpha.admin"], START_CARE, ghost), "UNKNOWN_IDENTITY")
    assert rule(read(w, "alpha.clinician2")) == "not_in_care"


# ---- break-glass -------------------------------------------------------------------------------


def test_break_glass_by_a_clinician(world: World) -> None:
    w, chain = world, world.chain
    grant(w, "beta.clinician", permit=False)  # even a deny provision yields to an emergency
    res = chain.read(w["beta.clinician"], w.record_id, break_glass=True, reason="unconscious in ER")
    assert res.ok
    assert res.data == {
        "record_id": w.record_id,
        "outcome": "allowed",
        "rule": "break_glass",
        "break_glass": "1",
    }
    ev, alert = res.events
    assert (ev.action, ev.actor, ev.subject, ev.outcome) == (
        "break_glass",
        w["beta.clinician"].id,
        w["alpha.patient"].id,
        "allowed",
    )
    assert "break_glass reason=unconscious in ER" in ev.detail
    assert (alert.action, alert.subject, alert.outcome, alert.record_id, alert.actor) == (
        "alert",
        REGULATOR_SUBJECT,
        ALERT_BREAK_GLASS,
        w.record_id,
        w["beta.clinician"].id,
    )
    assert alert.detail == "reason=unconscious in ER"


@pytest.mark.parametrize("reason", ["", "   "])
def test_break_glass_needs_a_reason(world: World, reason: str) -> None:
    w, chain = world, world.chain
    body = ReadRecordBody(
        record_id=w.record_id, purpose="treatment", break_glass=True, reason=reason
    )
    expect_refused(chain, chain.tx(w["beta.clinician"], READ_RECORD, body), "REASON_REQUIRED")


def test_read_reason_too_long(world: World) -> None:
    w, chain = world, world.chain
    body = ReadRecordBody(
        record_id=w.record_id, purpose="treatment", break_glass=True, reason="x" * 513
    )
    expect_refused(chain, chain.tx(w["beta.clinician"], READ_RECORD, body), "TX_MALFORMED")


@pytest.mark.parametrize("reader", ["alpha.researcher", "alpha.pharmacy", "beta.service"])
def test_break_glass_is_for_clinicians_only(world: World, reader: str) -> None:
    w = world
    res = w.chain.read(w[reader], w.record_id, break_glass=True, reason="emergency")
    assert rule(res) == "break_glass_not_permitted"
    assert res.data["break_glass"] == "0"
    assert [e.action for e in res.events] == ["read", "alert"]
    assert alerts(res)[0].outcome == ALERT_DENIED


def test_break_glass_by_the_author_is_flagged_by_the_patient_is_not(world: World) -> None:
    w = world
    res = w.chain.read(w["alpha.clinician"], w.record_id, break_glass=True, reason="habit")
    assert rule(res) == "break_glass" and res.data["break_glass"] == "1"
    res = w.chain.read(w["alpha.patient"], w.record_id, break_glass=True, reason="mine")
    assert rule(res) == "own_record" and res.data["break_glass"] == "0"
    assert alerts(res) == []


# ---- researchers, pharmacies, insurers, regulators -----------------------------------------------


def test_researcher_reads_deidentified_records_for_research_under_consent(world: World) -> None:
    w, chain = world, world.chain
    deid = chain.register(
        w["alpha.clinician"], w["alpha.patient"], deidentified=True, type="lab"
    ).data["record_id"]
    assert rule(read(w, "alpha.researcher", deid, "research")) == "no_consent"
    grant(w, "alpha.researcher", ["research", "treatment"])
    assert rule(read(w, "alpha.researcher", deid, "research")) == "consent"
    # identified records: never, consent or not
    assert rule(read(w, "alpha.researcher", purpose="research")) == "not_deidentified"
    # another purpose, although the consent lists it
    assert rule(read(w, "alpha.researcher", deid, "treatment")) == "purpose_not_permitted"


def test_pharmacy_and_insurer_need_a_consent_for_their_purpose(world: World) -> None:
    w = world
    for reader, purpose in (("alpha.pharmacy", "dispensing"), ("alpha.insurer", "insurance")):
        assert rule(read(w, reader, purpose=purpose)) == "no_consent"
        grant(w, reader, [purpose])
        assert rule(read(w, reader, purpose=purpose)) == "consent"
        assert rule(read(w, reader, purpose="treatment")) == "no_consent"
    assert rule(read(w, "alpha.pharmacy", purpose="insurance")) == "no_consent"


def test_regulators_admins_and_other_patients_never_read_content(world: World) -> None:
    w = world
    for reader in ("alpha.regulator", "alpha.admin", "alpha.patient2"):
        grant(w, reader, ["audit", "treatment"])
    assert rule(read(w, "alpha.regulator", purpose="audit")) == "regulator_no_content"
    assert rule(read(w, "alpha.regulator")) == "regulator_no_content"
    assert rule(read(w, "alpha.admin", purpose="audit")) == "role_no_content"
    assert rule(read(w, "alpha.patient2")) == "role_no_content"
    res = w.chain.read(w["alpha.regulator"], w.record_id, break_glass=True, reason="inspection")
    assert rule(res) == "regulator_no_content"


# ---- proxies ------------------------------------------------------------------------------------


def test_proxy_reads_grants_and_revokes_until_removed(world: World) -> None:
    w, chain = world, world.chain
    patient, proxy = w["alpha.patient"], w["alpha.patient2"]
    assert rule(read(w, "alpha.patient2")) == "role_no_content"
    res = set_proxy(w, "alpha.patient", "alpha.patient2")
    assert res.ok and res.data == {"proxy": proxy.id}
    assert [(e.action, e.subject) for e in res.events] == [("proxy.add", patient.id)]
    assert rule(read(w, "alpha.patient2")) == "proxy"
    # grant on the patient's behalf; revoke one the patient granted
    cid = grant(w, "beta.clinician", signer="alpha.patient2")
    assert decode(chain.state[k_consent(cid)], Consent).grantor == proxy.id
    assert rule(read(w, "beta.clinician")) == "consent"
    own = grant(w, "beta.clinician2")
    assert chain.block([revoke_tx(w, own, "alpha.patient2")]).results[0].ok
    assert rule(read(w, "beta.clinician2")) == "not_in_care"
    # removed: no more reads, grants or revocations
    res = set_proxy(w, "alpha.patient", "alpha.patient2", active=False)
    assert res.ok and res.events[0].action == "proxy.remove"
    assert k_proxies(patient.id) not in chain.state
    assert rule(read(w, "alpha.patient2")) == "role_no_content"
    expect_refused(chain, grant_tx(w, "alpha.patient2", "beta.clinician2"), "NOT_AUTHORIZED")
    expect_refused(chain, revoke_tx(w, cid, "alpha.patient2"), "NOT_AUTHORIZED")
    assert rule(read(w, "beta.clinician")) == "consent"  # the proxy's grant stays


def test_proxy_set_rules(world: World) -> None:
    w, chain = world, world.chain
    assert set_proxy(w, "alpha.clinician", "alpha.patient2").code == "NOT_AUTHORIZED"
    assert set_proxy(w, "alpha.patient", "alpha.patient").code == "TX_MALFORMED"
    assert set_proxy(w, "alpha.patient", "alpha.patient2", active=False).code == "NOT_A_PROXY"
    assert set_proxy(w, "alpha.patient", "beta.clinician").ok
    assert set_proxy(w, "alpha.patient", "beta.clinician").code == "ALREADY_PROXY"
    ghost = chain.tx(
        w["alpha.patient"], SET_PROXY, SetProxyBody(proxy=key("ghost").id, active=True)
    )
    expect_refused(chain, ghost, "UNKNOWN_IDENTITY")
    # a proxy acts for that patient only
    other = chain.register(w["alpha.clinician"], w["alpha.patient2"]).data["record_id"]
    assert rule(read(w, "beta.clinician", other)) == "not_in_care"
    assert rule(read(w, "beta.clinician")) == "proxy"


@pytest.mark.parametrize("role_holder", ["alpha.regulator", "alpha.admin"])
def test_no_content_roles_cannot_be_proxies(world: World, role_holder: str) -> None:
    # a regulator or admin as proxy would read content, and an admin could request and
    # approve an erasure alone
    w = world
    res = set_proxy(w, "alpha.patient", role_holder)
    assert res.code == "NOT_AUTHORIZED" and "proxy" in res.message
    assert not read(w, role_holder).ok


def test_a_suspended_proxy_can_still_be_removed(world: World) -> None:
    w, chain = world, world.chain
    assert set_proxy(w, "alpha.patient", "alpha.patient2").ok
    suspend = chain.tx(
        w["alpha.admin"], SUSPEND, SuspendBody(id=w["alpha.patient2"].id, reason="left")
    )
    assert chain.block([suspend]).results[0].ok
    res = set_proxy(w, "alpha.patient", "alpha.patient2", active=False)
    assert res.ok and res.events[0].action == "proxy.remove"
    assert k_proxies(w["alpha.patient"].id) not in chain.state


# ---- erasure ------------------------------------------------------------------------------------


def erase_request(w: World, signer: str, record_id: str | None = None, reason: str = "gdpr") -> Any:
    body = EraseRequestBody(record_id=record_id or w.record_id, reason=reason)
    return w.chain.tx(w[signer], ERASE_REQUEST, body)


def erase_approve(w: World, signer: str, record_id: str | None = None) -> Any:
    return w.chain.tx(
        w[signer], ERASE_APPROVE, EraseApproveBody(record_id=record_id or w.record_id)
    )


@pytest.mark.parametrize("approver", ["alpha.regulator", "alpha.admin"])
def test_erasure_request_approve_tombstone(world: World, approver: str) -> None:
    w, chain = world, world.chain
    meta = chain.app.query_record(w.record_id)
    assert meta is not None
    res = chain.block([erase_request(w, "alpha.patient")]).results[0]
    assert res.ok and res.data == {"record_id": w.record_id, "status": "pending"}
    assert [(e.action, e.outcome, e.detail) for e in res.events] == [
        ("erase.request", "pending", "reason=gdpr")
    ]
    assert k_erase_request(w.record_id) in chain.state
    expect_refused(chain, erase_request(w, "alpha.patient"), "ERASURE_PENDING")
    assert read(w, "alpha.clinician").ok  # still live while pending
    expect_refused(chain, erase_approve(w, "beta.admin"), "NOT_AUTHORIZED")
    expect_refused(chain, erase_approve(w, "alpha.clinician"), "NOT_AUTHORIZED")
    expect_refused(chain, erase_approve(w, "alpha.patient"), "NOT_AUTHORIZED")
    res = chain.block([erase_approve(w, approver)]).results[0]
    assert res.ok
    assert res.data == {
        "record_id": w.record_id,
        "status": "erased",
        "manifest_cid": meta.content_hash,
        "creator": w["alpha.clinician"].id,
    }
    ev, alert = res.events
    assert (ev.action, ev.actor, ev.subject) == ("erase", w[approver].id, w["alpha.patient"].id)
    assert (alert.subject, alert.outcome) == (REGULATOR_SUBJECT, ALERT_ERASURE)
    tomb = chain.app.query_record(w.record_id)
    assert tomb is not None
    assert tomb.erased_height == chain.height > 0
    assert (tomb.content_hash, tomb.shard_root, tomb.placement, tomb.custodians) == (
        "",
        b"",
        [],
        [],
    )
    assert (tomb.patient, tomb.type, tomb.creator) == (meta.patient, meta.type, meta.creator)
    assert k_erase_request(w.record_id) not in chain.state
    # every read is denied now: the patient, the author, break-glass
    grant(w, "beta.clinician")
    for reader in ("alpha.patient", "alpha.clinician", "alpha.service", "beta.clinician"):
        assert rule(read(w, reader)) == "record_erased", reader
    res = chain.read(w["beta.clinician"], w.record_id, break_glass=True, reason="emergency")
    assert rule(res) == "record_erased"
    expect_refused(chain, erase_request(w, "alpha.patient"), "RECORD_ERASED")


def test_erasure_by_proxy_and_refusals(world: World) -> None:
    w, chain = world, world.chain
    expect_refused(chain, erase_approve(w, "alpha.regulator"), "NO_ERASURE_REQUEST")
    for signer in ("alpha.clinician", "alpha.patient2", "alpha.admin", "alpha.regulator"):
        expect_refused(chain, erase_request(w, signer), "NOT_AUTHORIZED")
    expect_refused(chain, erase_request(w, "alpha.patient", reason=" "), "REASON_REQUIRED")
    expect_refused(chain, erase_request(w, "alpha.patient", "r" + "0" * 32), "RECORD_NOT_FOUND")
    expect_refused(chain, erase_request(w, "alpha.patient", "bogus"), "BAD_RECORD_ID")
    assert set_proxy(w, "alpha.patient", "alpha.patient2").ok
    assert chain.block([erase_request(w, "alpha.patient2")]).results[0].ok
    # a beta-authored record is approved by beta's admin, not alpha's
    beta_rec = chain.register(w["beta.clinician"], w["alpha.patient"]).data["record_id"]
    assert chain.block([erase_request(w, "alpha.patient", beta_rec)]).results[0].ok
    expect_refused(chain, erase_approve(w, "alpha.admin", beta_rec), "NOT_AUTHORIZED")
    assert chain.block([erase_approve(w, "beta.admin", beta_rec)]).results[0].ok
    assert chain.block([erase_approve(w, "alpha.admin2")]).results[0].ok
    for rid in (w.record_id, beta_rec):
        meta = chain.app.query_record(rid)
        assert meta is not None and meta.erased_height > 0


# ---- alerts and statistics ----------------------------------------------------------------------


def test_denied_read_raises_a_regulator_alert(world: World) -> None:
    w = world
    res = read(w, "beta.clinician")
    assert res.code == "ACCESS_DENIED"
    assert res.message.startswith("not_in_care: ")
    [alert] = alerts(res)
    assert (alert.action, alert.actor, alert.record_id, alert.outcome) == (
        "alert",
        w["beta.clinician"].id,
        w.record_id,
        ALERT_DENIED,
    )
    assert alert.detail.startswith("rule=not_in_care; ")
    assert alerts(read(w, "alpha.clinician")) == []  # allowed reads raise nothing


def spike_world(reads: int = 3, window_ms: int = 10_000) -> World:
    params = ChainParams(access_spike_reads=reads, access_spike_window_ms=window_ms)
    return World(make_genesis(params=params))


def spikes(results: list[TxResult]) -> list[int]:
    """Indexes of the results that raised an access-spike alert."""
    return [i for i, r in enumerate(results) for e in alerts(r) if e.outcome == ALERT_SPIKE]


def test_access_spike_alert_once_per_window() -> None:
    w = spike_world()
    chain = w.chain
    assert GENESIS_TIME_MS % 10_000 == 0 and chain.time_ms == GENESIS_TIME_MS + 2000
    # window 0 (block times +3000 .. +9000): five reads in one block, the fourth is the spike
    fin = chain.block([read_tx(w, "beta.clinician") for _ in range(5)])
    assert spikes(fin.results) == [3]
    [alert] = [e for e in fin.results[3].events if e.outcome == ALERT_SPIKE]
    assert (alert.subject, alert.actor, alert.record_id) == (
        REGULATOR_SUBJECT,
        w["beta.clinician"].id,
        w.record_id,
    )
    assert "more than 3 reads" in alert.detail
    # more reads in the same window: no second alert; another identity counts apart
    fin = chain.block(
        [read_tx(w, "beta.clinician"), *(read_tx(w, "alpha.clinician") for _ in range(3))]
    )
    assert spikes(fin.results) == []
    while chain.time_ms + 1000 < GENESIS_TIME_MS + 10_000:
        chain.block([])
    # window 1: the count starts again; allowed reads count as denied ones do
    fin = chain.block([read_tx(w, "beta.clinician") for _ in range(3)])
    assert chain.time_ms == GENESIS_TIME_MS + 10_000 and spikes(fin.results) == []
    fin = chain.block([read_tx(w, "beta.clinician"), read_tx(w, "alpha.clinician")])
    assert spikes(fin.results) == [0]
    fin = chain.block([read_tx(w, "alpha.clinician") for _ in range(3)])
    assert spikes(fin.results) == [2]  # 1 + 3 > 3 in this window


def test_stats_count_reads_and_writes(world: World) -> None:
    w, chain = world, world.chain
    write_key = k_stats("write", "alpha", "imaging.ct", "-", "ok")
    assert counter(chain, write_key) == 1  # the world's record
    chain.register(w["beta.clinician"], w["alpha.patient"], type="lab")
    chain.register(w["alpha.service"], w["alpha.patient"])
    assert counter(chain, write_key) == 2
    assert counter(chain, k_stats("write", "beta", "lab", "-", "ok")) == 1
    read(w, "alpha.clinician")
    read(w, "alpha.clinician")
    read(w, "beta.clinician")
    read(w, "alpha.patient", purpose="patient-access")
    read(w, "beta.clinician", "r" + "0" * 32)  # not found: not counted
    assert counter(chain, k_stats("read", "alpha", "imaging.ct", "treatment", "allowed")) == 2
    assert counter(chain, k_stats("read", "beta", "imaging.ct", "treatment", "denied")) == 1
    assert counter(chain, k_stats("read", "alpha", "imaging.ct", "patient-access", "allowed")) == 1
    stats = {
        k: int.from_bytes(v, "big") for k, v in chain.state.items() if k.startswith(STATS_PREFIX)
    }
    assert sum(v for k, v in stats.items() if k.startswith(STATS_PREFIX + b"read/")) == 4
    assert sum(v for k, v in stats.items() if k.startswith(STATS_PREFIX + b"write/")) == 3


# ---- malformed consent bodies -------------------------------------------------------------------


def malformed_cases(w: World) -> list[tuple[SignedTx, str]]:
    t = w.chain.time_ms
    other_record = w.chain.register(w["alpha.clinician"], w["alpha.patient2"]).data["record_id"]
    cases: list[tuple[str, str, tuple[str, ...] | list[str], dict[str, Any], str]] = [
        # (signer, actor, purposes, extra, code)
        ("alpha.patient", "beta.clinician", ["treatment", "referral"], {}, "TX_MALFORMED"),
        ("alpha.patient", "beta.clinician", ["referral", "referral"], {}, "TX_MALFORMED"),
        ("alpha.patient", "beta.clinician", ["curiosity"], {}, "BAD_PURPOSE"),
        ("alpha.patient", "beta.clinician", [], {}, "BAD_PURPOSE"),
        ("alpha.patient", "beta.clinician", ["treatment"], {"kind": "group"}, "TX_MALFORMED"),
        ("alpha.patient", "beta", ["treatment"], {"kind": "identity"}, "UNKNOWN_IDENTITY"),
        ("alpha.patient", "gamma", ["treatment"], {}, "UNKNOWN_INSTITUTION"),
        ("alpha.patient", "alpha.patient", ["treatment"], {}, "TX_MALFORMED"),  # self
        ("alpha.patient", "beta.clinician", ["treatment"], {"types": ["x", "a"]}, "TX_MALFORMED"),
        ("alpha.patient", "beta.clinician", ["treatment"], {"types": ["CT"]}, "BAD_RECORD_TYPE"),
        (
            "alpha.patient",
            "beta.clinician",
            ["treatment"],
            {"record_ids": [other_record]},  # another patient's record
            "RECORD_NOT_FOUND",
        ),
        (
            "alpha.patient",
            "beta.clinician",
            ["treatment"],
            {"record_ids": ["r" + "0" * 32]},
            "RECORD_NOT_FOUND",
        ),
        (
            "alpha.patient",
            "beta.clinician",
            ["treatment"],
            {"start_ms": t + 5000, "end_ms": t + 4000},  # ends before it starts
            "BAD_PERIOD",
        ),
        (
            "alpha.patient",
            "beta.clinician",
            ["treatment"],
            {"start_ms": t + 5000, "end_ms": t + 5000},
            "BAD_PERIOD",
        ),
        ("alpha.patient", "beta.clinician", ["treatment"], {"end_ms": t - 1}, "BAD_PERIOD"),  # past
        ("alpha.patient", "beta.clinician", ["treatment"], {"start_ms": -1}, "TX_MALFORMED"),
        ("alpha.patient", "beta.clinician", ["treatment"], {"end_ms": -1}, "TX_MALFORMED"),
        (
            "alpha.patient",
            "beta.clinician",
            ["treatment"],
            {"patient": "alpha.clinician"},  # not a patient
            "UNKNOWN_PATIENT",
        ),
    ]
    out = []
    for signer, actor, purposes, extra, code in cases:
        out.append((grant_tx(w, signer, actor, purposes, **extra), code))
    return out


def test_malformed_grants_are_refused_and_write_nothing(world: World) -> None:
    w = world
    for stx, code in malformed_cases(w):
        expect_refused(w.chain, stx, code)
    assert k_patient_consents(w["alpha.patient"].id) not in w.chain.state


def test_too_many_active_consents(world: World) -> None:
    w, chain = world, world.chain
    actors = ["beta.clinician", "beta.clinician2", "alpha.pharmacy", "alpha.insurer"]
    purposes = ["audit", "dispensing", "insurance", "referral", "research", "treatment"]
    txs = [
        grant_tx(w, "alpha.patient", actors[i % 4], [purposes[(i // 4) % 6]], end_ms=10**15 + i)
        for i in range(MAX_ACTIVE_CONSENTS)
    ]
    fin = chain.block(txs)
    assert all(r.ok for r in fin.results)
    listed = decode(chain.state[k_patient_consents(w["alpha.patient"].id)], ConsentList)
    assert len(listed.ids) == MAX_ACTIVE_CONSENTS and listed.ids == sorted(listed.ids)
    res = expect_refused(chain, grant_tx(w, "alpha.patient", "beta"), "TOO_MANY_CONSENTS")
    assert "revoke" in res.message
    # a decision over the full list still works; revoking one makes room
    assert rule(read(w, "beta.clinician")) == "consent"
    assert chain.block([revoke_tx(w, listed.ids[0])]).results[0].ok
    assert chain.block([grant_tx(w, "alpha.patient", "beta")]).results[0].ok


def test_expired_consents_leave_the_active_list_at_the_next_grant(world: World) -> None:
    w, chain = world, world.chain
    # blocks are 1 s apart: granted in the next block, read in the one after, then expired
    short = grant(w, "beta.clinician", end_ms=chain.time_ms + 2500)
    assert rule(read(w, "beta.clinician")) == "consent"
    assert rule(read(w, "beta.clinician")) == "not_in_care"  # expired by block time
    patient = w["alpha.patient"].id
    assert decode(chain.state[k_patient_consents(patient)], ConsentList).ids == [short]
    fresh = grant(w, "beta.clinician2")
    assert decode(chain.state[k_patient_consents(patient)], ConsentList).ids == [fresh]
    expired = decode(chain.state[k_consent(short)], Consent)
    assert (expired.status, expired.revoked_height) == ("inactive", 0)
    expect_refused(chain, revoke_tx(w, short, "alpha.patient"), "CONSENT_INACTIVE")

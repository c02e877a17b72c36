"""Delegations (bearer tokens): the pure checks, and transactions a gateway sends for a
token's identity, executed by the Application as that identity (ADR 0008)."""

from __future__ import annotations

import msgspec
import pytest
from mlhelpers import World, grant_body, key

from medledger.app import delegation
from medledger.app.delegation import (
    SCOPE_CONSENT,
    SCOPE_ENROLL,
    SCOPE_READ,
    Delegation,
    SignedDelegation,
)
from medledger.app.model import (
    ENROLL,
    GRANT_CONSENT,
    READ_RECORD,
    SUSPEND,
    Consent,
    EnrollBody,
    ReadRecordBody,
    SuspendBody,
    k_consent,
)
from medledger.codec import decode, encode
from medledger.errors import AuthError, Forbidden
from medledger.ledger.block import TxResult

CHAIN = "test-chain"
NOW = 1_800_000_000_000


def token(
    signer: str = "grantor",
    *,
    delegate: str = "gw",
    scopes: tuple[str, ...] = (SCOPE_READ,),
    now: int = NOW,
    lifetime_ms: int = 60_000,
    chain_id: str = CHAIN,
) -> bytes:
    return delegation.issue(
        key(signer),
        chain_id=chain_id,
        delegate=delegate,
        scopes=list(scopes),
        now_ms=now,
        lifetime_ms=lifetime_ms,
    )


def verify(raw: bytes, *, scope: str = SCOPE_READ, now: int = NOW + 1, delegate: str = "gw"):
    return delegation.verify(raw, chain_id=CHAIN, delegate=delegate, scope=scope, now_ms=now)


# ---- the pure checks --------------------------------------------------------------------


def test_a_token_round_trips_and_names_its_grantor() -> None:
    raw = token(scopes=(SCOPE_CONSENT, SCOPE_READ, SCOPE_READ))
    d = verify(delegation.token_bytes(delegation.token_text(raw)))
    assert d.grantor == key("grantor").id
    assert d.scopes == [SCOPE_CONSENT, SCOPE_READ]  # sorted, once each
    assert d.expires_ms == NOW + 60_000
    assert token() != token()  # a fresh nonce every time


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"scope": SCOPE_CONSENT}, "TOKEN_SCOPE"),
        ({"now": NOW + 60_000}, "TOKEN_EXPIRED"),
        ({"now": NOW - delegation.CLOCK_SKEW_MS - 1}, "TOKEN_INVALID"),
        ({"delegate": "another-gateway"}, "TOKEN_WRONG_NODE"),
    ],
)
def test_a_token_is_refused_outside_its_scope_time_or_node(kw: dict, code: str) -> None:
    with pytest.raises((AuthError, Forbidden)) as err:
        verify(token(), **kw)
    assert err.value.code == code


def test_a_token_for_another_chain_is_refused() -> None:
    with pytest.raises(AuthError) as err:
        verify(token(chain_id="other-chain"))
    assert err.value.code == "TOKEN_INVALID"


def test_a_tampered_token_is_refused() -> None:
    signed = decode(token(), SignedDelegation)
    d = decode(signed.delegation, Delegation)
    longer = msgspec.structs.replace(d, expires_ms=d.expires_ms + 10**9)
    forged = encode(msgspec.structs.replace(signed, delegation=encode(longer)))
    with pytest.raises(AuthError) as err:
        verify(forged)
    assert err.value.code == "TOKEN_INVALID"
    # another identity's key claiming the grantor's ID
    impostor = msgspec.structs.replace(d, grantor_key=key("mallory").public_key.raw)
    body = encode(impostor)
    resigned = SignedDelegation(
        delegation=body, signature=key("mallory").sign(delegation.DELEGATION_DOMAIN + body)
    )
    with pytest.raises(AuthError) as err:
        verify(encode(resigned))
    assert err.value.code == "TOKEN_INVALID"


@pytest.mark.parametrize(
    "text", ["", "Bearer", "mlt1.", "mlt1.!!!", "mlt2.AAAA", "mlt1." + "A" * 4000, "mlt1.AAAA"]
)
def test_garbage_is_not_a_token(text: str) -> None:
    with pytest.raises(AuthError) as err:
        verify(delegation.token_bytes(text))
    assert err.value.code == "TOKEN_INVALID"


def test_issuing_refuses_unknown_scopes_and_long_lifetimes() -> None:
    with pytest.raises(AuthError) as err:
        token(scopes=("admin",))
    assert err.value.code == "TOKEN_SCOPE"
    with pytest.raises(AuthError) as err:
        token(scopes=())
    assert err.value.code == "TOKEN_SCOPE"
    with pytest.raises(AuthError) as err:
        token(lifetime_ms=delegation.MAX_LIFETIME_MS + 1)
    assert err.value.code == "TOKEN_LIFETIME"


# ---- delegated transactions on the chain --------------------------------------------------


def chain_token(w: World, grantor: str, *scopes: str, lifetime_ms: int = 600_000, **kw) -> bytes:
    """A token of ``grantor`` for alpha's service (the gateway), issued at chain time."""
    return delegation.issue(
        w[grantor],
        chain_id=w.chain.genesis.chain_id,
        delegate=kw.get("delegate", w["alpha.service"].id),
        scopes=list(scopes or (SCOPE_READ,)),
        now_ms=kw.get("now", w.chain.time_ms),
        lifetime_ms=lifetime_ms,
    )


def delegated_read(w: World, raw: bytes, gateway: str = "alpha.service") -> TxResult:
    body = ReadRecordBody(record_id=w.record_id, purpose="treatment", delegation=raw)
    return w.chain.run(w[gateway], READ_RECORD, body)


def test_a_delegated_read_is_decided_for_and_recorded_as_the_grantor() -> None:
    w = World()
    gw = w["alpha.service"].id
    # beta's clinician has no care relation or consent: denied, as the clinician
    res = delegated_read(w, chain_token(w, "beta.clinician"))
    assert res.code == "ACCESS_DENIED" and res.data["rule"] == "not_in_care", res
    assert res.events[0].actor == w["beta.clinician"].id
    assert res.events[0].detail.endswith(f"via={gw}")
    # a service of alpha could read alpha's record itself: the delegation does not add it
    consent = w.chain.run(
        w["alpha.patient"],
        GRANT_CONSENT,
        grant_body(w["alpha.patient"].id, w["beta.clinician"].id),
    )
    assert consent.ok, consent
    res = delegated_read(w, chain_token(w, "beta.clinician"))
    assert res.ok and res.data["outcome"] == "allowed", res
    assert (res.events[0].actor, res.events[0].subject) == (
        w["beta.clinician"].id,
        w["alpha.patient"].id,
    )


def test_custody_re_checks_the_grantor() -> None:
    w = World()
    raw = chain_token(w, "alpha.clinician")
    gw = w.chain.app.query_identity(w["alpha.service"].id)
    assert gw is not None
    body = ReadRecordBody(w.record_id, "treatment", delegation=raw)
    assert w.chain.app.effective_reader(gw, body, w.chain.time_ms).id == w["alpha.clinician"].id
    with pytest.raises(AuthError) as err:  # at a time the token had expired
        w.chain.app.effective_reader(gw, body, w.chain.time_ms + 600_000)
    assert err.value.code == "TOKEN_EXPIRED"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        ({"delegate": "someone-else"}, "TOKEN_WRONG_NODE"),
        ({"now": 1_000, "lifetime_ms": 1_000}, "TOKEN_EXPIRED"),
    ],
)
def test_a_bad_delegation_fails_the_transaction_and_changes_nothing(mutate, code) -> None:
    w = World()
    res = delegated_read(w, chain_token(w, "alpha.clinician", **mutate))
    assert res.code == code and res.events == [], res


def test_a_read_token_cannot_grant_and_a_consent_token_can() -> None:
    w = World()
    patient = w["alpha.patient"].id
    body = grant_body(patient, w["beta.clinician"].id)
    res = w.chain.run(
        w["alpha.service"],
        GRANT_CONSENT,
        msgspec.structs.replace(body, delegation=chain_token(w, "alpha.patient")),
    )
    assert res.code == "TOKEN_SCOPE", res
    raw = chain_token(w, "alpha.patient", SCOPE_CONSENT)
    res = w.chain.run(
        w["alpha.service"], GRANT_CONSENT, msgspec.structs.replace(body, delegation=raw)
    )
    assert res.ok, res
    consent = w.chain.app.committed_view().get(k_consent(res.data["consent_id"]), Consent)
    assert consent is not None and consent.grantor == patient
    # somebody else's consent token does not grant for this patient
    raw = chain_token(w, "beta.patient", SCOPE_CONSENT)
    res = w.chain.run(
        w["alpha.service"], GRANT_CONSENT, msgspec.structs.replace(body, delegation=raw)
    )
    assert res.code == "NOT_AUTHORIZED", res


def test_an_admin_enrolls_through_the_gateway_with_an_enroll_token() -> None:
    w = World()
    new = key("pseudonymous-patient")
    body = EnrollBody(id=new.id, role="patient", delegation=chain_token(w, "alpha.admin"))
    assert w.chain.run(w["alpha.service"], ENROLL, body).code == "TOKEN_SCOPE"
    body = EnrollBody(
        id=new.id, role="patient", delegation=chain_token(w, "alpha.admin", SCOPE_ENROLL)
    )
    res = w.chain.run(w["alpha.service"], ENROLL, body)
    assert res.ok, res
    enrolled = w.chain.app.query_identity(new.id)
    assert enrolled is not None
    assert (enrolled.institution, enrolled.enrolled_by) == ("alpha", w["alpha.admin"].id)
    # a clinician's enroll token is worth what the clinician is: nothing
    other = key("another")
    body = EnrollBody(
        id=other.id, role="patient", delegation=chain_token(w, "alpha.clinician", SCOPE_ENROLL)
    )
    assert w.chain.run(w["alpha.service"], ENROLL, body).code == "NOT_AUTHORIZED"


def test_a_suspended_grantor_ends_its_tokens() -> None:
    w = World()
    raw = chain_token(w, "alpha.clinician")
    assert delegated_read(w, raw).ok
    res = w.chain.run(
        w["alpha.admin"], SUSPEND, SuspendBody(id=w["alpha.clinician"].id, reason="left")
    )
    assert res.ok, res
    assert delegated_read(w, raw).code == "IDENTITY_SUSPENDED"


def test_a_gateway_reads_on_behalf_of_a_device_of_its_institution() -> None:
    w = World()
    device = key("ct-scanner@alpha")
    w.chain.enroll(w["alpha.admin"], device, "service")
    body = ReadRecordBody(w.record_id, "treatment", on_behalf_of=device.id)
    res = w.chain.run(w["alpha.service"], READ_RECORD, body)
    assert res.ok, res
    assert res.events[0].actor == w["alpha.service"].id
    assert res.events[0].detail.endswith(f"on_behalf_of={device.id}")
    body = ReadRecordBody(w.record_id, "treatment", on_behalf_of=w["beta.service"].id)
    res = w.chain.run(w["alpha.service"], READ_RECORD, body)
    assert res.code == "NOT_AUTHORIZED" and "another institution" in res.message, res
    # a clinician is no gateway
    body = ReadRecordBody(w.record_id, "treatment", on_behalf_of=device.id)
    assert w.chain.run(w["alpha.clinician"], READ_RECORD, body).code == "NOT_AUTHORIZED"
    # both at once is malformed
    body = ReadRecordBody(
        w.record_id,
        "treatment",
        on_behalf_of=device.id,
        delegation=chain_token(w, "alpha.clinician"),
    )
    assert w.chain.run(w["alpha.service"], READ_RECORD, body).code == "TX_MALFORMED"


def test_a_delegated_registration_is_the_grantors_with_the_gateways_key_shares() -> None:
    from mlhelpers import register_body

    from medledger.app.model import REGISTER_RECORD

    w = World()
    patient = w["alpha.patient"].id
    gw = w["alpha.service"].id
    body = register_body(patient, delegation=chain_token(w, "alpha.clinician"))
    assert w.chain.run(w["alpha.service"], REGISTER_RECORD, body).code == "TOKEN_SCOPE"
    raw = chain_token(w, "alpha.clinician", delegation.SCOPE_WRITE)
    res = w.chain.run(w["alpha.service"], REGISTER_RECORD, register_body(patient, delegation=raw))
    assert res.ok, res
    meta = w.chain.app.query_record(res.data["record_id"])
    assert meta is not None
    assert (meta.creator, meta.depositor, meta.key_depositor) == (
        w["alpha.clinician"].id,
        gw,
        gw,
    )
    assert res.events[0].actor == w["alpha.clinician"].id
    assert res.events[0].detail.endswith(f"via={gw}")
    # the clinician reads what it wrote (rule: author)
    assert w.chain.read(w["alpha.clinician"], meta.record_id).data["rule"] == "author"
    # a patient's write token can't write for another patient
    raw = chain_token(w, "alpha.patient2", delegation.SCOPE_WRITE)
    res = w.chain.run(w["alpha.service"], REGISTER_RECORD, register_body(patient, delegation=raw))
    assert res.code == "NOT_AUTHORIZED", res
    # a registration is delegated or for a device, not both
    raw = chain_token(w, "alpha.clinician", delegation.SCOPE_WRITE)
    body = register_body(patient, delegation=raw, on_behalf_of=w["alpha.service"].id)
    assert w.chain.run(w["alpha.service"], REGISTER_RECORD, body).code == "TX_MALFORMED"

"""app.application: the deterministic state machine, driven block by block."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlhelpers import (
    PROPS,
    Chain,
    World,
    admin_key,
    content_cid,
    full_root,
    key,
    make_genesis,
    register_body,
    signed,
)

from medledger.app.application import Application, BlockContext
from medledger.app.model import (
    ACTIVE,
    ALERT_DENIED,
    ENROLL,
    PURPOSES,
    READ_RECORD,
    REGISTER_RECORD,
    REGULATOR_SUBJECT,
    START_CARE,
    SUSPEND,
    SUSPENDED,
    CareBody,
    EnrollBody,
    Identity,
    Institution,
    ReadRecordBody,
    RecordMeta,
    RegisterRecordBody,
    SuspendBody,
    is_record_id,
    k_access_rate,
    k_identity,
    k_institution,
    k_nonce,
    k_patient_record,
    k_record,
    k_stats,
    record_id_for,
)
from medledger.codec import decode, encode
from medledger.errors import AuthError, InvalidTransaction, MedLedgerError
from medledger.ledger.block import Event
from medledger.ledger.tx import Tx, sign_tx

ALPHA = admin_key("alpha")
BETA = admin_key("beta")


def nonce_of(chain: Chain, who: str) -> int:
    return chain.app.next_nonce(who)


def expect_check(chain: Chain, stx, code: str, exc_type=MedLedgerError) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc_type) as exc:
        chain.check(stx)
    assert exc.value.code == code


# ---- genesis ------------------------------------------------------------------------------


def test_genesis_state(chain: Chain) -> None:
    for name, admin in (("alpha", ALPHA), ("beta", BETA)):
        inst = decode(chain.state[k_institution(name)], Institution)
        assert inst == Institution(name=name, admin_id=admin.id)
        ident = chain.app.query_identity(admin.id)
        assert ident == Identity(
            id=admin.id,
            role="admin",
            institution=name,
            status=ACTIVE,
            enrolled_height=0,
            enrolled_by="genesis",
        )
    assert chain.app_hash == full_root(chain.state)
    assert chain.app.next_nonce(ALPHA.id) == 0


def test_genesis_bad_institution_name() -> None:
    g = make_genesis(["Bad Name"])
    with pytest.raises(InvalidTransaction) as exc:
        Application(g, {}.get).genesis_writes()
    assert exc.value.code == "GENESIS_INVALID"


def test_commit_without_finalize(chain: Chain) -> None:
    with pytest.raises(RuntimeError):
        chain.app.commit()


# ---- enrollment ---------------------------------------------------------------------------


def test_enroll_by_admin(chain: Chain) -> None:
    doc = key("doc")
    stx = chain.tx(ALPHA, ENROLL, EnrollBody(id=doc.id, role="clinician"))
    chain.check(stx)
    res = chain.block([stx]).results[0]
    assert res.ok and res.code == "OK"
    assert res.data == {"id": doc.id, "role": "clinician", "institution": "alpha"}
    assert res.events == [
        Event(
            action="enroll",
            actor=ALPHA.id,
            subject=doc.id,
            record_id="",
            outcome="ok",
            detail="role=clinician institution=alpha",
        )
    ]
    ident = chain.app.query_identity(doc.id)
    assert ident == Identity(
        id=doc.id,
        role="clinician",
        institution="alpha",
        status=ACTIVE,
        enrolled_height=1,
        enrolled_by=ALPHA.id,
    )
    assert chain.app.next_nonce(ALPHA.id) == 1
    assert chain.app_hash == full_root(chain.state)


def test_enrollment_goes_to_the_admins_institution(chain: Chain) -> None:
    doc = key("doc")
    chain.enroll(BETA, doc, "clinician")
    ident = chain.app.query_identity(doc.id)
    assert ident is not None and ident.institution == "beta"


@pytest.mark.parametrize("role", ["clinician", "patient", "researcher", "regulator", "service"])
def test_enroll_only_by_admin(world: World, role: str) -> None:
    chain = world.chain
    actor = world[f"alpha.{role}"]
    newbie = key("newbie")
    stx = chain.tx(actor, ENROLL, EnrollBody(id=newbie.id, role="clinician"))
    expect_check(chain, stx, "NOT_AUTHORIZED", InvalidTransaction)
    before = dict(chain.state)
    res = chain.block([stx]).results[0]
    assert res.code == "NOT_AUTHORIZED" and res.events == [] and res.data == {}
    assert chain.app.query_identity(newbie.id) is None
    # only the sender's nonce moved
    changed = {k for k in set(before) | set(chain.state) if before.get(k) != chain.state.get(k)}
    assert changed == {k_nonce(actor.id)}
    assert chain.app.next_nonce(actor.id) == stx.tx.nonce + 1


def test_second_admin_may_enroll(world: World) -> None:
    newbie = key("newbie")
    assert world.chain.enroll(world["alpha.admin2"], newbie, "clinician").ok
    ident = world.chain.app.query_identity(newbie.id)
    assert ident is not None and ident.enrolled_by == world["alpha.admin2"].id


@pytest.mark.parametrize("role", ["", "doctor", "Admin", "clinician ", "root"])
def test_bad_role(chain: Chain, role: str) -> None:
    stx = chain.tx(ALPHA, ENROLL, EnrollBody(id=key("x").id, role=role))
    expect_check(chain, stx, "BAD_ROLE")
    assert chain.block([stx]).results[0].code == "BAD_ROLE"
    assert chain.app.query_identity(key("x").id) is None


@pytest.mark.parametrize(
    "ident", ["", "alice", key("x").id.upper(), key("x").id[:-1], "r" + "0" * 32]
)
def test_bad_identity_id(chain: Chain, ident: str) -> None:
    res = chain.run(ALPHA, ENROLL, EnrollBody(id=ident, role="patient"))
    assert res.code == "BAD_IDENTITY_ID"


def test_double_enrollment(chain: Chain) -> None:
    doc = key("doc")
    chain.enroll(ALPHA, doc, "clinician")
    for admin in (ALPHA, BETA):
        stx = chain.tx(admin, ENROLL, EnrollBody(id=doc.id, role="patient"))
        expect_check(chain, stx, "ALREADY_ENROLLED")
        assert chain.block([stx]).results[0].code == "ALREADY_ENROLLED"
    ident = chain.app.query_identity(doc.id)
    assert ident is not None and (ident.role, ident.institution) == ("clinician", "alpha")
    # an admin cannot re-enroll an admin either
    assert (
        chain.run(ALPHA, ENROLL, EnrollBody(id=BETA.id, role="clinician")).code
        == "ALREADY_ENROLLED"
    )


def test_double_enrollment_in_one_block(chain: Chain) -> None:
    doc = key("doc")
    a = chain.tx(ALPHA, ENROLL, EnrollBody(id=doc.id, role="clinician"))
    b = chain.tx(BETA, ENROLL, EnrollBody(id=doc.id, role="patient"))
    res = chain.block([a, b]).results
    assert [r.code for r in res] == ["OK", "ALREADY_ENROLLED"]
    ident = chain.app.query_identity(doc.id)
    assert ident is not None and ident.institution == "alpha"


# ---- suspension ----------------------------------------------------------------------------


def test_suspend_and_suspended_sender(world: World) -> None:
    chain = world.chain
    doc = world["alpha.clinician"]
    res = chain.run(world["alpha.admin"], SUSPEND, SuspendBody(id=doc.id, reason="left"))
    assert res.ok
    assert res.events == [
        Event(
            action="suspend",
            actor=world["alpha.admin"].id,
            subject=doc.id,
            record_id="",
            outcome="ok",
            detail="left",
        )
    ]
    ident = chain.app.query_identity(doc.id)
    assert ident is not None and ident.status == SUSPENDED and ident.role == "clinician"
    # suspended identities cannot send anything
    stx = chain.tx(doc, READ_RECORD, ReadRecordBody(record_id=world.record_id, purpose="treatment"))
    expect_check(chain, stx, "IDENTITY_SUSPENDED", AuthError)
    n = nonce_of(chain, doc.id)
    res = chain.block([stx]).results[0]
    assert res.code == "IDENTITY_SUSPENDED" and res.events == []
    assert nonce_of(chain, doc.id) == n  # not consumed
    # already suspended
    again = chain.run(world["alpha.admin"], SUSPEND, SuspendBody(id=doc.id, reason="again"))
    assert again.code == "ALREADY_SUSPENDED"


def test_suspended_patient_cannot_get_records(world: World) -> None:
    chain = world.chain
    patient = world["alpha.patient"]
    assert chain.run(world["alpha.admin"], SUSPEND, SuspendBody(id=patient.id, reason="")).ok
    res = chain.register(world["alpha.clinician"], patient)
    assert res.code == "NOT_AUTHORIZED"


def test_cannot_suspend_self(chain: Chain) -> None:
    stx = chain.tx(ALPHA, SUSPEND, SuspendBody(id=ALPHA.id, reason="oops"))
    expect_check(chain, stx, "CANNOT_SUSPEND_SELF")
    assert chain.block([stx]).results[0].code == "CANNOT_SUSPEND_SELF"
    ident = chain.app.query_identity(ALPHA.id)
    assert ident is not None and ident.status == ACTIVE


def test_suspend_other_institution_or_non_admin(world: World) -> None:
    chain = world.chain
    target = world["alpha.clinician"]
    assert (
        chain.run(world["beta.admin"], SUSPEND, SuspendBody(id=target.id, reason="")).code
        == "NOT_AUTHORIZED"
    )
    assert (
        chain.run(
            world["alpha.clinician"], SUSPEND, SuspendBody(id=world["alpha.patient"].id, reason="")
        ).code
        == "NOT_AUTHORIZED"
    )
    assert (
        chain.run(
            world["beta.admin"], SUSPEND, SuspendBody(id=world["alpha.admin"].id, reason="")
        ).code
        == "NOT_AUTHORIZED"
    )
    ident = chain.app.query_identity(target.id)
    assert ident is not None and ident.status == ACTIVE


def test_suspend_unknown_and_long_reason(chain: Chain) -> None:
    assert (
        chain.run(ALPHA, SUSPEND, SuspendBody(id=key("ghost").id, reason="")).code
        == "UNKNOWN_IDENTITY"
    )
    doc = key("doc")
    chain.enroll(ALPHA, doc, "clinician")
    assert (
        chain.run(ALPHA, SUSPEND, SuspendBody(id=doc.id, reason="x" * 513)).code == "TX_MALFORMED"
    )
    assert chain.run(ALPHA, SUSPEND, SuspendBody(id=doc.id, reason="x" * 512)).ok


def test_admin_may_suspend_second_admin(world: World) -> None:
    chain = world.chain
    assert chain.run(
        world["alpha.admin"], SUSPEND, SuspendBody(id=world["alpha.admin2"].id, reason="")
    ).ok
    res = chain.run(world["alpha.admin2"], ENROLL, EnrollBody(id=key("n").id, role="clinician"))
    assert res.code == "IDENTITY_SUSPENDED"


# ---- sender, chain, nonces ---------------------------------------------------------------------


def test_unknown_sender(chain: Chain) -> None:
    stranger = key("stranger")
    stx = chain.tx(stranger, ENROLL, EnrollBody(id=stranger.id, role="admin"))
    expect_check(chain, stx, "UNKNOWN_IDENTITY", AuthError)
    before = dict(chain.state)
    res = chain.block([stx]).results[0]
    assert res.code == "UNKNOWN_IDENTITY"
    assert chain.state == before  # not even a nonce


def test_wrong_chain(chain: Chain) -> None:
    stx = chain.tx(
        ALPHA, ENROLL, EnrollBody(id=key("x").id, role="patient"), chain_id="other-chain"
    )
    expect_check(chain, stx, "WRONG_CHAIN", InvalidTransaction)
    before = dict(chain.state)
    assert chain.block([stx]).results[0].code == "WRONG_CHAIN"
    assert chain.state == before


def test_nonce_replay_and_gap(chain: Chain) -> None:
    first = chain.tx(ALPHA, ENROLL, EnrollBody(id=key("a").id, role="patient"), nonce=0)
    chain.check(first)
    assert chain.block([first]).results[0].ok
    replay = chain.tx(ALPHA, ENROLL, EnrollBody(id=key("b").id, role="patient"), nonce=0)
    committed = chain.app.next_nonce(ALPHA.id)
    assert committed == 1
    with pytest.raises(MedLedgerError) as exc:
        chain.check(replay, expected_nonce=committed)
    assert exc.value.code == "NONCE_REPLAY"
    gap = chain.tx(ALPHA, ENROLL, EnrollBody(id=key("b").id, role="patient"), nonce=2)
    with pytest.raises(InvalidTransaction) as exc:
        chain.check(gap, expected_nonce=committed)
    assert exc.value.code == "NONCE_GAP"
    # check_tx honours the caller's expected nonce (mempool-pending ones)
    chain.check(gap, expected_nonce=2)
    with pytest.raises(MedLedgerError) as exc:
        chain.check(gap, expected_nonce=3)
    assert exc.value.code == "NONCE_REPLAY"
    before = dict(chain.state)
    res = chain.block([replay, gap]).results
    assert [r.code for r in res] == ["NONCE_REPLAY", "NONCE_GAP"]
    assert chain.state == before
    # the exact same envelope replayed later is refused too
    assert chain.block([first]).results[0].code == "NONCE_REPLAY"


def test_nonces_in_one_block(chain: Chain) -> None:
    txs = [
        chain.tx(ALPHA, ENROLL, EnrollBody(id=key(f"p{i}").id, role="patient")) for i in range(5)
    ]
    assert [t.tx.nonce for t in txs] == [0, 1, 2, 3, 4]
    res = chain.block([txs[0], txs[1], txs[3], txs[2], txs[4]]).results
    assert [r.code for r in res] == ["OK", "OK", "NONCE_GAP", "OK", "NONCE_GAP"]
    assert chain.app.next_nonce(ALPHA.id) == 3


def test_failed_tx_consumes_nonce(chain: Chain) -> None:
    bad = chain.tx(ALPHA, ENROLL, EnrollBody(id=key("x").id, role="bogus"))
    good = chain.tx(ALPHA, ENROLL, EnrollBody(id=key("x").id, role="patient"))
    res = chain.block([bad, good]).results
    assert [r.code for r in res] == ["BAD_ROLE", "OK"]
    assert chain.app.next_nonce(ALPHA.id) == 2


def test_unknown_kind_and_malformed_body(chain: Chain) -> None:
    unknown = chain.tx(ALPHA, "identity.frobnicate", EnrollBody(id=key("x").id, role="patient"))
    expect_check(chain, unknown, "UNKNOWN_TX_KIND")
    wrong_body = chain.tx(ALPHA, ENROLL, SuspendBody(id=key("x").id, reason="x"))
    # (str, str) decodes as an EnrollBody with its trailing default, but the encoding
    # is not the canonical one (which always carries the delegation): malformed
    assert wrong_body.tx.body != encode(EnrollBody(id=key("x").id, role="x"))
    not_a_struct = chain.tx(ALPHA, ENROLL, [1, 2, 3])
    expect_check(chain, not_a_struct, "TX_MALFORMED")
    non_canonical = chain.tx(ALPHA, REGISTER_RECORD, b"")
    res = chain.block([unknown, wrong_body, not_a_struct, non_canonical]).results
    assert [r.code for r in res] == [
        "UNKNOWN_TX_KIND",
        "TX_MALFORMED",
        "TX_MALFORMED",
        "TX_MALFORMED",
    ]
    assert chain.app.next_nonce(ALPHA.id) == 4


def test_body_with_trailing_bytes_is_malformed(chain: Chain) -> None:
    body = encode(EnrollBody(id=key("x").id, role="patient")) + b"\x00"
    tx = Tx(chain_id=chain.genesis.chain_id, sender=ALPHA.id, nonce=0, kind=ENROLL, body=body)
    stx = signed(sign_tx(ALPHA, tx))
    expect_check(chain, stx, "TX_MALFORMED")
    assert chain.block([stx]).results[0].code == "TX_MALFORMED"
    assert chain.app.query_identity(key("x").id) is None


def test_body_with_invalid_utf8_is_malformed(chain: Chain) -> None:
    # (regression: UnicodeDecodeError used to escape check_tx and finalize_block)
    good = encode(EnrollBody(id=key("x").id, role="patient"))
    body = good[:-7] + b"\xff" + good[-6:]  # corrupt one byte of the role string "patient"
    tx = Tx(chain_id=chain.genesis.chain_id, sender=ALPHA.id, nonce=0, kind=ENROLL, body=body)
    stx = signed(sign_tx(ALPHA, tx))
    expect_check(chain, stx, "TX_MALFORMED", InvalidTransaction)
    # and a block holding it must still execute, with a TX_MALFORMED result
    assert chain.block([stx]).results[0].code == "TX_MALFORMED"


# ---- records ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("author", "patient", "ok"),
    [
        ("alpha.clinician", "alpha.patient", True),
        ("alpha.service", "alpha.patient", True),
        ("beta.clinician", "alpha.patient", True),  # any clinical author may write
        ("alpha.patient", "alpha.patient", True),  # own record
        ("alpha.patient2", "alpha.patient", False),
        ("beta.patient", "alpha.patient", False),
        ("alpha.researcher", "alpha.patient", False),
        ("alpha.regulator", "alpha.patient", False),
        ("alpha.pharmacy", "alpha.patient", False),
        ("alpha.insurer", "alpha.patient", False),
        ("alpha.admin", "alpha.patient", False),
        ("alpha.clinician", "alpha.researcher", False),  # records belong to patients
    ],
)
def test_register_permissions(world: World, author: str, patient: str, ok: bool) -> None:
    chain = world.chain
    stx = chain.tx(world[author], REGISTER_RECORD, register_body(world[patient].id))
    if ok:
        chain.check(stx)
    else:
        expect_check(chain, stx, "NOT_AUTHORIZED")
    res = chain.block([stx]).results[0]
    if not ok:
        assert res.code == "NOT_AUTHORIZED"
        assert chain.app.query_record(record_id_for(stx.hash)) is None
        return
    assert res.ok
    record_id = res.data["record_id"]
    assert record_id == record_id_for(stx.hash) and is_record_id(record_id)
    meta = chain.app.query_record(record_id)
    author_ident = chain.app.query_identity(world[author].id)
    assert author_ident is not None
    assert meta == RecordMeta(
        record_id=record_id,
        patient=world[patient].id,
        type="imaging.ct",
        content_hash=content_cid(world[patient].id),
        size=1234,
        chunk_count=1,
        shard_root=bytes(32),
        k=1,
        m=0,
        placement=["alpha"],
        custodians=["alpha"],
        threshold=1,
        deidentified=False,
        institution=author_ident.institution,
        creator=world[author].id,
        created_ms=chain.time_ms,
        height=chain.height,
    )
    assert chain.state[k_patient_record(world[patient].id, record_id)] == b""
    assert res.events == [
        Event(
            action="write",
            actor=world[author].id,
            subject=world[patient].id,
            record_id=record_id,
            outcome="ok",
            detail="type=imaging.ct size=1234",
        )
    ]


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"content_hash": "not-a-cid"}, "BAD_CID"),
        ({"content_hash": content_cid()[:-1] + "1"}, "BAD_CID"),
        ({"content_hash": ""}, "BAD_CID"),
        ({"type": "CT"}, "BAD_RECORD_TYPE"),
        ({"type": ""}, "BAD_RECORD_TYPE"),
        ({"type": "a" * 33}, "BAD_RECORD_TYPE"),
        ({"size": -1}, "TX_MALFORMED"),
        ({"size": 1 << 48}, "TX_MALFORMED"),
        ({"chunk_count": -1}, "TX_MALFORMED"),
        ({"k": 0}, "BAD_ERASURE_PARAMS"),
        ({"k": 11}, "BAD_ERASURE_PARAMS"),
        ({"m": 5}, "BAD_ERASURE_PARAMS"),
        ({"placement": []}, "BAD_PLACEMENT"),
        ({"placement": ["alpha", "alpha"], "m": 1}, "BAD_PLACEMENT"),
        ({"placement": ["nowhere"]}, "BAD_PLACEMENT"),
        ({"custodians": []}, "BAD_CUSTODY"),
        ({"custodians": ["nowhere"]}, "BAD_CUSTODY"),  # not an institution
        ({"custodians": ["alpha", "alpha"], "threshold": 2}, "BAD_CUSTODY"),  # duplicate
        ({"custodians": ["alpha", "beta"], "threshold": 1}, "BAD_CUSTODY"),  # < 2/3 of 2
        ({"custodians": ["alpha"], "threshold": 0}, "BAD_CUSTODY"),
        ({"custodians": ["alpha"], "threshold": 2}, "BAD_CUSTODY"),  # more than n
        ({"custodians": ["alpha", "beta"], "threshold": 3}, "BAD_CUSTODY"),
        ({"shard_root": b"short"}, "TX_MALFORMED"),
    ],
)
def test_register_validation(world: World, override: dict, code: str) -> None:  # type: ignore[type-arg]
    chain = world.chain
    doc, patient = world["alpha.clinician"], world["alpha.patient"]
    stx = chain.tx(doc, REGISTER_RECORD, register_body(patient.id, **override))
    expect_check(chain, stx, code)
    before = dict(chain.state)
    res = chain.block([stx]).results[0]
    assert res.code == code and res.events == []
    changed = {k for k in set(before) | set(chain.state) if before.get(k) != chain.state.get(k)}
    assert changed == {k_nonce(doc.id)}


def test_register_custodian_must_be_a_validator_institution() -> None:
    # gamma is a member institution but runs no validator: it holds no key shares
    chain = Chain(make_genesis(("alpha", "beta", "gamma"), ("alpha", "beta")))
    doc, patient = key("doc"), key("pat")
    chain.enroll(ALPHA, doc, "clinician")
    chain.enroll(ALPHA, patient, "patient")
    res = chain.register(doc, patient, custodians=["gamma"])
    assert res.code == "BAD_CUSTODY" and "gamma" in res.message
    assert chain.register(doc, patient, placement=["gamma"]).ok  # shards may live there
    res = chain.register(doc, patient, custodians=["alpha", "beta"], threshold=2)
    assert res.ok
    meta = chain.app.query_record(res.data["record_id"])
    assert meta is not None and (meta.custodians, meta.threshold) == (["alpha", "beta"], 2)


@pytest.mark.parametrize(
    ("n", "least"),
    [(1, 1), (2, 2), (3, 2), (4, 3), (5, 4), (6, 4), (7, 5)],  # ceil(2n/3)
)
def test_register_custody_threshold_bounds(n: int, least: int) -> None:
    names = [f"inst{i}" for i in range(n)]
    chain = Chain(make_genesis(names))
    doc, patient = key("doc"), key("pat")
    chain.enroll(admin_key("inst0"), doc, "clinician")
    chain.enroll(admin_key("inst0"), patient, "patient")
    placement = ["inst0"]
    assert (
        chain.register(
            doc, patient, placement=placement, custodians=names, threshold=least - 1
        ).code
        == "BAD_CUSTODY"
    )
    assert chain.register(doc, patient, placement=placement, custodians=names, threshold=least).ok
    assert chain.register(doc, patient, placement=placement, custodians=names, threshold=n).ok
    assert (
        chain.register(doc, patient, placement=placement, custodians=names, threshold=n + 1).code
        == "BAD_CUSTODY"
    )


def test_register_deidentified_flag(world: World) -> None:
    res = world.chain.register(world["alpha.clinician"], world["alpha.patient"], deidentified=True)
    assert res.ok
    meta = world.chain.app.query_record(res.data["record_id"])
    assert meta is not None and meta.deidentified and meta.erased_height == 0


def test_register_unknown_patient(world: World) -> None:
    res = world.chain.register(world["alpha.clinician"], key("ghost"))
    assert res.code == "UNKNOWN_PATIENT"


def test_register_edge_values(world: World) -> None:
    res = world.chain.register(
        world["alpha.clinician"],
        world["alpha.patient"],
        type="a" * 32,
        size=(1 << 48) - 1,
        chunk_count=0,
        k=1,
        m=1,
        placement=["alpha", "beta"],
    )
    assert res.ok


# ---- reads ---------------------------------------------------------------------------------------

# world.record_id: alpha.patient's record, written by alpha.clinician. Without consents,
# care relationships or break-glass only the patient, the author and alpha's services read.
READERS = {
    "alpha.patient": True,
    "alpha.clinician": True,  # the author
    "alpha.clinician2": False,  # same institution, but neither author nor in care
    "alpha.service": True,
    "alpha.patient2": False,
    "alpha.researcher": False,
    "alpha.regulator": False,
    "alpha.pharmacy": False,
    "alpha.insurer": False,
    "alpha.admin": False,
    "beta.clinician": False,
    "beta.clinician2": False,
    "beta.service": False,
    "beta.patient": False,
    "beta.admin": False,
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_read_decisions(world: World, reader: str) -> None:
    chain = world.chain
    allowed = READERS[reader]
    k = world[reader]
    stx = chain.tx(k, READ_RECORD, ReadRecordBody(record_id=world.record_id, purpose="treatment"))
    chain.check(stx)  # denied reads are admitted too: the attempt is audited
    before = dict(chain.state)
    res = chain.block([stx]).results[0]
    assert res.code == ("OK" if allowed else "ACCESS_DENIED")
    outcome = "allowed" if allowed else "denied"
    assert res.data["outcome"] == outcome
    assert res.data == {
        "record_id": world.record_id,
        "outcome": outcome,
        "rule": res.data["rule"],
        "break_glass": "0",
    }
    assert res.data["rule"]
    ev = res.events[0]
    assert (ev.action, ev.actor, ev.subject, ev.record_id, ev.outcome) == (
        "read",
        k.id,
        world["alpha.patient"].id,
        world.record_id,
        outcome,
    )
    assert ev.detail.startswith("purpose=treatment; ")
    if allowed:
        assert len(res.events) == 1
    else:
        # a denial names its rule and is raised to the regulator
        assert res.message.startswith(res.data["rule"] + ": ")
        assert [(e.action, e.subject, e.outcome) for e in res.events[1:]] == [
            ("alert", REGULATOR_SUBJECT, ALERT_DENIED)
        ]
    assert chain.app.next_nonce(k.id) == stx.tx.nonce + 1
    changed = {
        key_ for key_ in set(before) | set(chain.state) if before.get(key_) != chain.state.get(key_)
    }
    # the nonce, the reader's access-rate window and one statistics counter
    ident = chain.app.query_identity(k.id)
    assert ident is not None
    stats = k_stats("read", ident.institution, "imaging.ct", "treatment", outcome)
    assert changed == {k_nonce(k.id), k_access_rate(k.id), stats}


def test_read_validation(world: World) -> None:
    chain = world.chain
    doc = world["alpha.clinician"]
    cases = [
        (ReadRecordBody(record_id="nope", purpose="treatment"), "BAD_RECORD_ID"),
        (ReadRecordBody(record_id=world.record_id.upper(), purpose="treatment"), "BAD_RECORD_ID"),
        (ReadRecordBody(record_id=world.record_id, purpose="curiosity"), "BAD_PURPOSE"),
        (ReadRecordBody(record_id="r" + "0" * 32, purpose="treatment"), "RECORD_NOT_FOUND"),
    ]
    for body, code in cases:
        stx = chain.tx(doc, READ_RECORD, body)
        expect_check(chain, stx, code)
        res = chain.block([stx]).results[0]
        assert res.code == code and res.events == []


@pytest.mark.parametrize("purpose", sorted(PURPOSES))
def test_read_purposes(world: World, purpose: str) -> None:
    res = world.chain.read(world["alpha.patient"], world.record_id, purpose)
    assert res.ok and res.events[0].detail.startswith(f"purpose={purpose}; ")


def test_record_of_other_institution_visible_to_its_author_and_services(world: World) -> None:
    chain = world.chain
    res = chain.register(world["beta.clinician"], world["alpha.patient"])
    assert res.ok
    rid = res.data["record_id"]
    assert chain.read(world["beta.clinician"], rid).ok  # the author
    assert chain.read(world["beta.service"], rid).ok  # the institution's services
    assert chain.read(world["alpha.patient"], rid).ok
    assert chain.read(world["alpha.service"], rid).code == "ACCESS_DENIED"
    # clinicians neither authoring nor in care: not even the patient's own institution's
    for reader in ("alpha.clinician", "beta.clinician2"):
        res = chain.read(world[reader], rid)
        assert res.code == "ACCESS_DENIED" and res.data["rule"] == "not_in_care"


def test_same_institution_clinician_reads_in_care(world: World) -> None:
    chain = world.chain
    doc2 = world["alpha.clinician2"]
    assert chain.read(doc2, world.record_id).data["rule"] == "not_in_care"
    body = CareBody(patient=world["alpha.patient"].id, clinician=doc2.id, kind="admission")
    assert chain.run(world["alpha.admin"], START_CARE, body).ok
    res = chain.read(doc2, world.record_id)
    assert res.ok and res.data["rule"] == "care_relationship"


def test_block_mixing_results(world: World) -> None:
    chain = world.chain
    doc, res_ = world["alpha.clinician"], world["alpha.researcher"]
    txs = [
        chain.tx(doc, READ_RECORD, ReadRecordBody(record_id=world.record_id, purpose="treatment")),
        chain.tx(res_, READ_RECORD, ReadRecordBody(record_id=world.record_id, purpose="research")),
        chain.tx(doc, REGISTER_RECORD, register_body(world["alpha.patient"].id, type="lab")),
        chain.tx(doc, REGISTER_RECORD, register_body(world["alpha.patient"].id, content_hash="x")),
    ]
    fin = chain.block(txs)
    assert [r.code for r in fin.results] == ["OK", "ACCESS_DENIED", "OK", "BAD_CID"]
    assert fin.app_hash == full_root(chain.state)
    new_id = fin.results[2].data["record_id"]
    # a record registered earlier in the block is readable later in the same block
    later = chain.tx(
        world["alpha.patient"],
        READ_RECORD,
        ReadRecordBody(record_id=new_id, purpose="patient-access"),
    )
    reg = chain.tx(doc, REGISTER_RECORD, register_body(world["alpha.patient"].id, type="note"))
    rid = record_id_for(reg.hash)
    read_same_block = chain.tx(
        world["alpha.patient"], READ_RECORD, ReadRecordBody(record_id=rid, purpose="patient-access")
    )
    fin = chain.block([later, reg, read_same_block])
    assert [r.code for r in fin.results] == ["OK", "OK", "OK"]


# ---- app hash and determinism -------------------------------------------------------------------


def test_app_hash_tracks_state(world: World) -> None:
    chain = world.chain
    hashes = {chain.app_hash}
    for _ in range(3):
        fin = chain.block(
            [
                chain.tx(
                    world["alpha.patient"],
                    READ_RECORD,
                    ReadRecordBody(record_id=world.record_id, purpose="patient-access"),
                )
            ]
        )
        assert fin.app_hash == full_root(chain.state)
        assert fin.app_hash not in hashes  # the nonce changed
        hashes.add(fin.app_hash)
    empty = chain.block([])
    assert empty.results == [] and empty.app_hash == fin.app_hash


def test_check_tx_does_not_write(world: World) -> None:
    chain = world.chain
    before, root = dict(chain.state), chain.app.tree.root()
    stx = chain.tx(world["alpha.admin"], ENROLL, EnrollBody(id=key("n").id, role="patient"))
    chain.check(stx)
    chain.check(stx)  # idempotent: nonce is not consumed by check_tx
    assert chain.state == before and chain.app.tree.root() == root


def test_restart_from_state_gives_same_hash(world: World) -> None:
    chain = world.chain
    app2 = Application(chain.genesis, dict(chain.state).get)
    assert app2.load_tree(list(chain.state.items())) == chain.app_hash


ACTORS = [
    "alpha.admin",
    "beta.admin",
    "alpha.clinician",
    "alpha.patient",
    "beta.clinician",
    "alpha.researcher",
    "beta.patient",
    "alpha.service",
]
TARGETS = [
    "alpha.patient",
    "beta.patient",
    "alpha.clinician",
    "alpha.patient2",
    "newbie0",
    "newbie1",
]

op = st.tuples(
    st.sampled_from(["enroll", "suspend", "register", "read", "read_new", "bad_nonce"]),
    st.sampled_from(ACTORS),
    st.sampled_from(TARGETS),
    st.sampled_from(["clinician", "patient", "bogus"]),
)


def build_txs(world: World, ops: list[tuple[str, str, str, str]], new_records: list[str]):  # type: ignore[no-untyped-def]
    chain = world.chain
    txs = []
    for kind, actor_name, target_name, role in ops:
        actor = world[actor_name]
        target = key(target_name) if target_name.startswith("newbie") else world[target_name]
        if kind == "enroll":
            txs.append(chain.tx(actor, ENROLL, EnrollBody(id=target.id, role=role)))
        elif kind == "suspend":
            txs.append(chain.tx(actor, SUSPEND, SuspendBody(id=target.id, reason=role)))
        elif kind == "register":
            stx = chain.tx(actor, REGISTER_RECORD, register_body(target.id, type=role))
            new_records.append(record_id_for(stx.hash))
            txs.append(stx)
        elif kind == "read":
            txs.append(
                chain.tx(
                    actor,
                    READ_RECORD,
                    ReadRecordBody(record_id=world.record_id, purpose="treatment"),
                )
            )
        elif kind == "read_new":
            rid = new_records[-1] if new_records else world.record_id
            txs.append(chain.tx(actor, READ_RECORD, ReadRecordBody(record_id=rid, purpose="audit")))
        else:
            txs.append(chain.tx(actor, ENROLL, EnrollBody(id=target.id, role=role), nonce=0))
    return txs


@PROPS
@given(st.lists(st.lists(op, max_size=6), min_size=1, max_size=4))
def test_determinism_and_incremental_hash(blocks: list[list[tuple[str, str, str, str]]]) -> None:
    # Build the transactions once (on a throwaway world that tracks nonces) ...
    w = World()
    new: list[str] = []
    planned = []
    for ops in blocks:
        txs = build_txs(w, ops, new)
        planned.append(txs)
        w.chain.block(txs)
    # ... then execute the same blocks on two fresh worlds.
    a, b = World(), World()
    assert a.chain.app_hash == b.chain.app_hash == w.chain.blocks[1][1].app_hash
    for txs, (_, fin_w) in zip(planned, w.chain.blocks[2:], strict=True):
        fa = a.chain.block(txs)
        fb = b.chain.block(txs)
        assert fa.app_hash == fb.app_hash == fin_w.app_hash
        assert fa.results == fb.results == fin_w.results
        assert encode(fa.results) == encode(fb.results)
        assert a.chain.state == b.chain.state
        assert fa.app_hash == full_root(a.chain.state)
        for r in fa.results:
            # every failure leaves no events; denied reads are the one included failure with one
            if r.code == "ACCESS_DENIED":
                assert [e.outcome for e in r.events] == ["denied", ALERT_DENIED]
            elif not r.ok:
                assert r.events == [] and r.data == {}
            else:
                assert len(r.events) == 1


def test_determinism_across_instances_with_context(world: World) -> None:
    # Same block, same context, two applications over copies of the same state.
    chain = world.chain
    txs = [
        chain.tx(
            world["alpha.clinician"], REGISTER_RECORD, register_body(world["alpha.patient"].id)
        )
    ]
    outs = []
    for _ in range(2):
        state = dict(chain.state)
        app = Application(chain.genesis, state.get)
        app.load_tree(list(state.items()))
        fin = app.finalize_block(BlockContext(height=9, time_ms=123, proposer="p"), txs)
        outs.append((fin.app_hash, encode(fin.results), dict(fin.writes)))
    assert outs[0] == outs[1]
    meta = decode(outs[0][2][k_record(record_id_for(txs[0].hash))], RecordMeta)  # type: ignore[arg-type]
    assert (meta.height, meta.created_ms) == (9, 123)
    assert k_identity(world["alpha.clinician"].id) not in outs[0][2]


def test_register_on_behalf_of_a_service(world: World) -> None:
    """A gateway (a service) registers for another service of its institution (ADR 0008)."""
    chain = world.chain
    device = key("modality@alpha")
    other_device = key("modality@beta")
    assert chain.enroll(world["alpha.admin"], device, "service").ok
    assert chain.enroll(world["beta.admin"], other_device, "service").ok
    gateway, patient = world["alpha.service"], world["alpha.patient"]

    res = chain.register(gateway, patient, on_behalf_of=device.id)
    assert res.ok, res
    (ev,) = res.events
    assert ev.actor == gateway.id and f"on_behalf_of={device.id}" in ev.detail
    meta = chain.app.query_record(res.data["record_id"])
    assert meta is not None and meta.creator == gateway.id

    for author, target, rule in (
        (gateway, other_device, "other institution"),  # a service of another institution
        (gateway, world["alpha.clinician"], "must be a service"),  # not a service
        (gateway, key("ghost"), "not an enrolled"),
        (world["alpha.clinician"], device, "only a service"),  # the sender is no service
        (world["beta.service"], device, "other institution"),
    ):
        res = chain.register(author, patient, on_behalf_of=target.id)
        assert res.code == "NOT_AUTHORIZED" and rule in res.message, (rule, res)

    assert chain.run(world["alpha.admin"], SUSPEND, SuspendBody(id=device.id, reason="retired")).ok
    res = chain.register(gateway, patient, on_behalf_of=device.id)
    assert res.code == "NOT_AUTHORIZED" and "suspended" in res.message


def test_register_body_on_behalf_of_is_a_trailing_default() -> None:
    """An encoding without the trailing field decodes to its default; the canonical
    encoding always carries it."""
    body = register_body(key("p").id)
    assert body.on_behalf_of == "" and body.part_of == "" and body.delegation == b""
    full = encode(body)
    short = b"\x9c" + full[1:-4]  # 12 of the 15 fields: the array header, less "", "", b""
    assert full[0] == 0x9F and full[-4:] == b"\xa0\xa0\xc4\x00"
    assert decode(short, RegisterRecordBody) == body
    assert encode(decode(full, RegisterRecordBody)) == full

"""Consortium membership contracts: governance votes by 2/3+ power, evidence jails."""

from __future__ import annotations

import pytest
from mlhelpers import Chain, admin_key, key, make_genesis

from medledger.app.membership import evidence_vote
from medledger.app.model import (
    PROPOSE_MEMBER,
    SUBMIT_EVIDENCE,
    VOTE_MEMBER,
    EvidenceBody,
    ProposeMemberBody,
    VoteMemberBody,
)
from medledger.consensus.types import PREVOTE, SignedVote
from medledger.ledger.block import Vote

MEMBERS = ("alpha", "beta", "gamma", "delta")


def chain() -> Chain:
    return Chain(make_genesis(MEMBERS, MEMBERS))


def add_body(name: str = "epsilon", power: int = 1) -> ProposeMemberBody:
    return ProposeMemberBody(
        action="add",
        institution=name,
        validator_public_key=key(f"validator/{name}").public_key.raw,
        admin_public_key=admin_key(name).public_key.raw,
        power=power,
    )


def remove_body(name: str) -> ProposeMemberBody:
    return ProposeMemberBody(
        action="remove", institution=name, validator_public_key=b"", admin_public_key=b"", power=0
    )


def names(c: Chain) -> list[str]:
    return sorted(v.name for v in c.app.query_validators())


def test_admission_needs_more_than_two_thirds() -> None:
    c = chain()
    res = c.run(admin_key("alpha"), PROPOSE_MEMBER, add_body())
    assert res.ok and res.data["status"] == "open"
    pid = res.data["proposal_id"]
    fin = c.block([c.tx(admin_key("beta"), VOTE_MEMBER, VoteMemberBody(pid, True))])
    assert fin.results[0].data["status"] == "open"  # 2 of 4 is not 2/3+
    assert fin.validator_updates is None
    fin = c.block([c.tx(admin_key("gamma"), VOTE_MEMBER, VoteMemberBody(pid, True))])
    assert fin.results[0].data["status"] == "passed"
    assert [e.action for e in fin.results[0].events] == ["governance.vote", "governance.enacted"]
    assert fin.validator_updates is not None
    assert sorted(v.name for v in fin.validator_updates) == sorted([*MEMBERS, "epsilon"])
    assert names(c) == sorted([*MEMBERS, "epsilon"])
    # the new member's admin and node key are identities of the new institution
    admin = c.app.query_identity(admin_key("epsilon").id)
    node = c.app.query_identity(key("validator/epsilon").id)
    assert admin is not None and admin.role == "admin" and admin.institution == "epsilon"
    assert node is not None and node.role == "node"
    # and the new admin can now act: enroll someone
    assert c.enroll(admin_key("epsilon"), key("patient@epsilon"), "patient").ok


def test_votes_are_checked() -> None:
    c = chain()
    pid = c.run(admin_key("alpha"), PROPOSE_MEMBER, add_body()).data["proposal_id"]
    twice = c.run(admin_key("alpha"), VOTE_MEMBER, VoteMemberBody(pid, True))
    assert twice.code == "ALREADY_VOTED"
    outsider = key("clinician")
    c.enroll(admin_key("alpha"), outsider, "clinician")
    assert c.run(outsider, VOTE_MEMBER, VoteMemberBody(pid, True)).code == "NOT_AUTHORIZED"
    assert c.run(admin_key("beta"), VOTE_MEMBER, VoteMemberBody("g0000", True)).code == (
        "PROPOSAL_NOT_FOUND"
    )
    # two no votes make 2/3+ unreachable: rejected, and closed
    c.run(admin_key("beta"), VOTE_MEMBER, VoteMemberBody(pid, False))
    res = c.run(admin_key("gamma"), VOTE_MEMBER, VoteMemberBody(pid, False))
    assert res.data["status"] == "rejected"
    assert c.run(admin_key("delta"), VOTE_MEMBER, VoteMemberBody(pid, True)).code == (
        "PROPOSAL_CLOSED"
    )
    assert names(c) == sorted(MEMBERS)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (add_body("alpha"), "INSTITUTION_EXISTS"),
        (add_body("Bad Name"), "BAD_INSTITUTION"),
        (add_body(power=0), "BAD_POWER"),
        (remove_body("nobody"), "NOT_A_MEMBER"),
        (
            ProposeMemberBody(
                action="promote",
                institution="x",
                validator_public_key=b"",
                admin_public_key=b"",
                power=0,
            ),
            "BAD_GOV_ACTION",
        ),
    ],
)
def test_bad_proposals(body: ProposeMemberBody, code: str) -> None:
    c = chain()
    assert c.run(admin_key("alpha"), PROPOSE_MEMBER, body).code == code


def test_removal() -> None:
    c = chain()
    pid = c.run(admin_key("alpha"), PROPOSE_MEMBER, remove_body("delta")).data["proposal_id"]
    c.run(admin_key("beta"), VOTE_MEMBER, VoteMemberBody(pid, True))
    fin = c.block([c.tx(admin_key("gamma"), VOTE_MEMBER, VoteMemberBody(pid, True))])
    assert fin.validator_updates is not None
    assert names(c) == ["alpha", "beta", "gamma"]
    # delta's admin is no longer a voting member
    res = c.run(admin_key("delta"), PROPOSE_MEMBER, add_body())
    assert res.code == "NOT_A_MEMBER"


def signed_vote(name: str, block_hash: bytes, *, height: int = 7, round_: int = 0) -> SignedVote:
    k = key(f"validator/{name}")
    return SignedVote.create(
        k,
        Vote(
            chain_id=make_genesis().chain_id,
            type=PREVOTE,
            height=height,
            round=round_,
            block_hash=block_hash,
            time_ms=1,
            validator=k.id,
        ),
    )


def evidence(a: SignedVote, b: SignedVote) -> EvidenceBody:
    return EvidenceBody(
        first=evidence_vote(a.vote, a.signature), second=evidence_vote(b.vote, b.signature)
    )


def advance(c: Chain, blocks: int) -> None:
    for _ in range(blocks):
        c.block([])


def test_equivocation_jails_the_validator() -> None:
    c = chain()
    advance(c, 8)
    reporter = key("validator/alpha")  # a node key: a node identity since genesis
    a, b = signed_vote("delta", b"\x01" * 32), signed_vote("delta", b"\x02" * 32)
    fin = c.block([c.tx(reporter, SUBMIT_EVIDENCE, evidence(a, b))])
    res = fin.results[0]
    assert res.ok and res.data["institution"] == "delta"
    assert [e.action for e in res.events] == ["jail", "alert"]
    alert = res.events[1]  # the regulator's view: subject @regulator, the kind as outcome
    assert (alert.subject, alert.outcome) == ("@regulator", "validator_jailed")
    assert res.events[0].subject == key("validator/delta").id
    assert fin.validator_updates is not None and names(c) == ["alpha", "beta", "gamma"]
    # the same evidence again: no longer a member
    again = c.run(reporter, SUBMIT_EVIDENCE, evidence(a, b))
    assert again.code == "NOT_A_MEMBER"


@pytest.mark.parametrize("case", ["same_hash", "other_round", "forged", "future", "stranger"])
def test_bad_evidence(case: str) -> None:
    c = chain()
    advance(c, 3)
    a = signed_vote("delta", b"\x01" * 32)
    b = signed_vote("delta", b"\x02" * 32)
    if case == "same_hash":
        b = a
    elif case == "other_round":
        b = signed_vote("delta", b"\x02" * 32, round_=1)
    elif case == "forged":
        b = SignedVote(vote=b.vote, signature=signed_vote("gamma", b"\x02" * 32).signature)
    elif case == "future":
        a = signed_vote("delta", b"\x01" * 32, height=99)
        b = signed_vote("delta", b"\x02" * 32, height=99)
    elif case == "stranger":
        a = signed_vote("mallory", b"\x01" * 32)
        b = signed_vote("mallory", b"\x02" * 32)
    res = c.run(key("validator/alpha"), SUBMIT_EVIDENCE, evidence(a, b))
    assert res.code in ("BAD_EVIDENCE", "NOT_A_MEMBER"), res
    assert names(c) == sorted(MEMBERS)

"""Consortium membership as system contracts: the validator set, its governance
(admission and removal voted by 2/3+ of the current voting power) and evidence of
equivocation (the validator is jailed: removed from the set).

Changes to the set are returned to consensus as ``validator_updates`` of the block
that decided them; consensus makes them effective two heights later.
"""

from __future__ import annotations

from dataclasses import dataclass

from medledger.app.model import (
    ACTIVE,
    ALERT_JAILED,
    GOV_ADD,
    GOV_OPEN,
    GOV_PASSED,
    GOV_REMOVE,
    INSTITUTION_RE,
    EvidenceBody,
    EvidenceRecord,
    EvidenceVote,
    GovProposal,
    Identity,
    Institution,
    ProposeMemberBody,
    Role,
    VoteMemberBody,
    alert_event,
    k_evidence,
    k_identity,
    k_institution,
    k_proposal,
    k_validators,
    new_identity,
)
from medledger.app.state import StateView
from medledger.codec import Record
from medledger.crypto.keys import PublicKey, identity_id_for
from medledger.errors import MedLedgerError
from medledger.ledger.block import Event, Validator, Vote, vote_sign_bytes


class MembershipError(MedLedgerError):
    default_code = "TX_FAILED"


class ValidatorList(Record, frozen=True):
    validators: list[Validator]  # sorted by id


@dataclass(frozen=True, slots=True)
class Outcome:
    events: list[Event]
    data: dict[str, str]
    validator_updates: list[Validator] | None = None


def current_validators(view: StateView) -> list[Validator]:
    vl = view.get(k_validators(), ValidatorList)
    return [] if vl is None else list(vl.validators)


def _set_validators(view: StateView, validators: list[Validator]) -> list[Validator]:
    ordered = sorted(validators, key=lambda v: v.id)
    view.put(k_validators(), ValidatorList(validators=ordered))
    return ordered


def _member_admin(view: StateView, sender: Identity, validators: list[Validator]) -> Validator:
    if sender.status != ACTIVE or sender.role != Role.ADMIN.value:
        raise MembershipError(
            "only a member institution's admin may do this", code="NOT_AUTHORIZED"
        )
    for v in validators:
        if v.name == sender.institution:
            return v
    raise MembershipError("the sender's institution is not a voting member", code="NOT_A_MEMBER")


def propose(
    view: StateView, height: int, tx_hash: bytes, sender: Identity, body: ProposeMemberBody
) -> Outcome:
    validators = current_validators(view)
    _member_admin(view, sender, validators)
    if body.action == GOV_ADD:
        if not INSTITUTION_RE.match(body.institution):
            raise MembershipError("bad institution name", code="BAD_INSTITUTION")
        if view.get_raw(k_institution(body.institution)) is not None:
            raise MembershipError("institution already exists", code="INSTITUTION_EXISTS")
        if len(body.validator_public_key) != 32 or len(body.admin_public_key) != 32:
            raise MembershipError("keys must be 32-byte Ed25519 keys", code="BAD_PUBLIC_KEY")
        if not 0 < body.power <= 1_000_000:
            raise MembershipError("power must be 1..1000000", code="BAD_POWER")
        vid = identity_id_for(body.validator_public_key)
        if any(v.id == vid for v in validators):
            raise MembershipError("validator key already in the set", code="ALREADY_MEMBER")
    elif body.action == GOV_REMOVE:
        if not any(v.name == body.institution for v in validators):
            raise MembershipError("institution is not a voting member", code="NOT_A_MEMBER")
        if len(validators) <= 1:
            raise MembershipError("cannot remove the last validator", code="LAST_VALIDATOR")
    else:
        raise MembershipError("action must be add or remove", code="BAD_GOV_ACTION")
    pid = "g" + tx_hash[:8].hex()
    proposal = GovProposal(
        id=pid,
        action=body.action,
        institution=body.institution,
        validator_public_key=body.validator_public_key,
        admin_public_key=body.admin_public_key,
        power=body.power,
        proposer=sender.institution,
        approvals=[sender.institution],
        rejections=[],
        status=GOV_OPEN,
        height=height,
        decided_height=0,
    )
    ev = Event(
        action="governance.propose",
        actor=sender.id,
        subject=sender.id,
        record_id="",
        outcome="ok",
        detail=f"proposal={pid} action={body.action} institution={body.institution}",
    )
    return _tally(view, height, proposal, validators, [ev])


def vote(view: StateView, height: int, sender: Identity, body: VoteMemberBody) -> Outcome:
    validators = current_validators(view)
    member = _member_admin(view, sender, validators)
    proposal = view.get(k_proposal(body.proposal_id), GovProposal)
    if proposal is None:
        raise MembershipError("no such proposal", code="PROPOSAL_NOT_FOUND")
    if proposal.status != GOV_OPEN:
        raise MembershipError("proposal is already decided", code="PROPOSAL_CLOSED")
    if member.name in proposal.approvals or member.name in proposal.rejections:
        raise MembershipError("this institution already voted", code="ALREADY_VOTED")
    approvals = sorted([*proposal.approvals, member.name]) if body.approve else proposal.approvals
    rejections = (
        proposal.rejections if body.approve else sorted([*proposal.rejections, member.name])
    )
    updated = _replace(proposal, approvals=approvals, rejections=rejections)
    ev = Event(
        action="governance.vote",
        actor=sender.id,
        subject=sender.id,
        record_id="",
        outcome="ok",
        detail=f"proposal={proposal.id} approve={str(body.approve).lower()}",
    )
    return _tally(view, height, updated, validators, [ev])


def _tally(
    view: StateView, height: int, p: GovProposal, validators: list[Validator], events: list[Event]
) -> Outcome:
    total = sum(v.power for v in validators)
    yes = sum(v.power for v in validators if v.name in p.approvals)
    no = sum(v.power for v in validators if v.name in p.rejections)
    data = {"proposal_id": p.id, "status": p.status}
    updates: list[Validator] | None = None
    if yes * 3 > total * 2:
        p = _replace(p, status=GOV_PASSED, decided_height=height)
        updates = _enact(view, height, p, validators)
        data["status"] = GOV_PASSED
        events.append(
            Event(
                action="governance.enacted",
                actor=events[0].actor,
                subject=events[0].actor,
                record_id="",
                outcome="ok",
                detail=f"proposal={p.id} action={p.action} institution={p.institution} "
                f"effective_height={height + 2}",
            )
        )
    elif no * 3 >= total:  # 2/3+ can no longer be reached
        p = _replace(p, status="rejected", decided_height=height)
        data["status"] = "rejected"
    view.put(k_proposal(p.id), p)
    return Outcome(events=events, data=data, validator_updates=updates)


def _enact(
    view: StateView, height: int, p: GovProposal, validators: list[Validator]
) -> list[Validator]:
    if p.action == GOV_ADD:
        admin_id = identity_id_for(p.admin_public_key)
        view.put(k_institution(p.institution), Institution(name=p.institution, admin_id=admin_id))
        node_id = identity_id_for(p.validator_public_key)
        for id_, role in ((admin_id, Role.ADMIN.value), (node_id, Role.NODE.value)):
            if view.get_raw(k_identity(id_)) is None:
                view.put(
                    k_identity(id_), new_identity(id_, role, p.institution, height, "governance")
                )
        new = Validator(
            name=p.institution, id=node_id, public_key=p.validator_public_key, power=p.power
        )
        return _set_validators(view, [*validators, new])
    return _set_validators(view, [v for v in validators if v.name != p.institution])


def submit_evidence(
    view: StateView, height: int, sender: Identity, body: EvidenceBody, chain_id: str
) -> Outcome:
    a, b = body.first.vote, body.second.vote
    if a.chain_id != chain_id:
        raise MembershipError("evidence from another chain", code="BAD_EVIDENCE")
    if (a.chain_id, a.type, a.height, a.round, a.validator) != (
        b.chain_id,
        b.type,
        b.height,
        b.round,
        b.validator,
    ):
        raise MembershipError(
            "votes are not for the same height, round and step", code="BAD_EVIDENCE"
        )
    if a.block_hash == b.block_hash:
        raise MembershipError("votes do not conflict", code="BAD_EVIDENCE")
    # height -1 is the mempool's check (no block yet): equivocation at the height being
    # decided is the usual case, and the block that includes it is at least that high
    if height >= 0 and a.height > height:
        raise MembershipError("evidence from the future", code="BAD_EVIDENCE")
    validators = current_validators(view)
    val = next((v for v in validators if v.id == a.validator), None)
    if val is None:
        raise MembershipError("not a current validator (maybe already jailed)", code="NOT_A_MEMBER")
    for ev_vote in (body.first, body.second):
        try:
            PublicKey(val.public_key).verify(vote_sign_bytes(ev_vote.vote), ev_vote.signature)
        except MedLedgerError:
            raise MembershipError(
                "a vote in the evidence is not validly signed", code="BAD_EVIDENCE"
            )
    if len(validators) <= 1:
        raise MembershipError("cannot jail the last validator", code="LAST_VALIDATOR")
    view.put(
        k_evidence(val.id),
        EvidenceRecord(
            validator=val.id,
            institution=val.name,
            height=a.height,
            round=a.round,
            type=a.type,
            first_hash=a.block_hash,
            second_hash=b.block_hash,
            committed_height=height,
        ),
    )
    updates = _set_validators(view, [v for v in validators if v.id != val.id])
    ev = Event(
        action="jail",
        actor=sender.id,
        subject=val.id,
        record_id="",
        outcome="ok",
        detail=f"equivocation institution={val.name} height={a.height} round={a.round} "
        f"type={a.type}; effective_height={height + 2}",
    )
    alert = alert_event(
        ALERT_JAILED,
        val.id,
        "",
        f"institution={val.name} equivocation at height={a.height} round={a.round}",
    )
    return Outcome(
        events=[ev, alert],
        data={"jailed": val.id, "institution": val.name},
        validator_updates=updates,
    )


def evidence_vote(vote: Vote, signature: bytes) -> EvidenceVote:
    return EvidenceVote(vote=vote, signature=signature)


def _replace(p: GovProposal, **changes: object) -> GovProposal:
    import msgspec

    return msgspec.structs.replace(p, **changes)

"""The deterministic application ("system contracts"), behind an ABCI-shaped boundary.

``check_tx`` admits transactions to the mempool, ``finalize_block`` executes a
block into a pending overlay and returns results and the app hash,
``commit`` hands the pending writes to the store, ``query`` reads committed
state (optionally with a proof). No I/O, no clock: block time comes in the
block context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from medledger.app import access, consents, delegation, membership, patients, reads, storage
from medledger.app.membership import ValidatorList
from medledger.app.model import (
    ACTIVE,
    END_CARE,
    ENROLL,
    ERASE_APPROVE,
    ERASE_REQUEST,
    GRANT_CONSENT,
    INSTITUTION_RE,
    PATIENT_MERGE,
    PROPOSE_MEMBER,
    PSEUDONYM_ENROLL,
    READ_RECORD,
    RECORD_TYPE_RE,
    REGISTER_RECORD,
    REVOKE_CONSENT,
    ROLES,
    SET_PROXY,
    START_CARE,
    STORAGE_ALERT,
    STORAGE_REPAIR,
    SUBMIT_EVIDENCE,
    SUSPEND,
    SUSPENDED,
    VOTE_MEMBER,
    CareBody,
    EnrollBody,
    EraseApproveBody,
    EraseRequestBody,
    EvidenceBody,
    GrantConsentBody,
    Identity,
    Institution,
    MergeBody,
    ProposeMemberBody,
    PseudonymBody,
    ReadRecordBody,
    RecordMeta,
    RegisterRecordBody,
    RevokeConsentBody,
    Role,
    SetProxyBody,
    StorageAlertBody,
    StorageRepairBody,
    SuspendBody,
    VoteMemberBody,
    consent_id_for,
    enrollment_event,
    k_identity,
    k_institution,
    k_nonce,
    k_patient_record,
    k_record,
    k_stats,
    k_validators,
    new_identity,
    record_id_for,
)
from medledger.app.state import StateView
from medledger.codec import Record, decode, decode_canonical, encode
from medledger.crypto.cid import is_cid
from medledger.crypto.keys import is_identity_id
from medledger.errors import AuthError, Conflict, InvalidTransaction, MedLedgerError
from medledger.ledger.block import Event, TxResult, Validator
from medledger.ledger.genesis import Genesis
from medledger.ledger.statetree import StateTree
from medledger.ledger.tx import SignedTx

# Execution failures that still belong on chain: the attempt itself is audited.
INCLUDED_FAILURES = frozenset({"ACCESS_DENIED"})

# the transaction kinds a node's gateway may send for a token's identity, and the scope
# the delegation must carry for each (app/delegation.py)
DELEGATED_SCOPES = {
    READ_RECORD: delegation.SCOPE_READ,
    GRANT_CONSENT: delegation.SCOPE_CONSENT,
    REVOKE_CONSENT: delegation.SCOPE_CONSENT,
    ENROLL: delegation.SCOPE_ENROLL,
    REGISTER_RECORD: delegation.SCOPE_WRITE,
}

MAX_SIZE = 1 << 48
DECODED_CACHE = 100_000
_MISSING: Any = object()
MAX_REASON_LEN = 512


@dataclass(frozen=True, slots=True)
class BlockContext:
    height: int
    time_ms: int
    proposer: str


@dataclass(slots=True, eq=False)
class FinalizedBlock:
    """A block executed against the committed state, not yet committed.

    ``validator_updates`` is the complete new validator set when the block changed
    it (governance, jailing); consensus makes it effective two heights later.
    """

    results: list[TxResult]
    app_hash: bytes
    writes: dict[bytes, bytes | None] = field(default_factory=dict)
    validator_updates: list[Validator] | None = None
    undo: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    tx_hashes: list[bytes] = field(default_factory=list)


class ExecError(MedLedgerError):
    """A transaction that executes to a failure result (nothing written)."""

    default_code = "TX_FAILED"


class Application:
    def __init__(self, genesis: Genesis, committed: Callable[[bytes], bytes | None]) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self._committed = committed
        self.tree = StateTree()
        self._applied: FinalizedBlock | None = None  # executed, in the tree, not committed
        self._block_updates: list[Validator] | None = None
        self._decoded: dict[bytes, Any] = {}
        self._handlers: dict[str, tuple[type[Record], Callable[..., TxResult]]] = {
            ENROLL: (EnrollBody, self._enroll),
            SUSPEND: (SuspendBody, self._suspend),
            REGISTER_RECORD: (RegisterRecordBody, self._register_record),
            READ_RECORD: (ReadRecordBody, self._read_record),
            PROPOSE_MEMBER: (ProposeMemberBody, self._propose_member),
            VOTE_MEMBER: (VoteMemberBody, self._vote_member),
            SUBMIT_EVIDENCE: (EvidenceBody, self._submit_evidence),
            STORAGE_ALERT: (StorageAlertBody, self._storage_tx(storage.alert)),
            STORAGE_REPAIR: (StorageRepairBody, self._storage_tx(storage.repair)),
            GRANT_CONSENT: (
                GrantConsentBody,
                _rule(
                    lambda v, c, stx, s, b: consents.grant(
                        v, s, b, consent_id_for(stx.hash), c.height, c.time_ms
                    )
                ),
            ),
            REVOKE_CONSENT: (
                RevokeConsentBody,
                _rule(lambda v, c, stx, s, b: consents.revoke(v, s, b, c.height)),
            ),
            START_CARE: (
                CareBody,
                _rule(lambda v, c, stx, s, b: consents.start_care(v, s, b, c.height, c.time_ms)),
            ),
            END_CARE: (CareBody, _rule(lambda v, c, stx, s, b: consents.end_care(v, s, b))),
            SET_PROXY: (SetProxyBody, _rule(lambda v, c, stx, s, b: consents.set_proxy(v, s, b))),
            ERASE_REQUEST: (
                EraseRequestBody,
                _rule(lambda v, c, stx, s, b: reads.request_erasure(v, s, b, c.height)),
            ),
            PSEUDONYM_ENROLL: (
                PseudonymBody,
                _rule(lambda v, c, stx, s, b: patients.enroll_pseudonym(v, s, b, c.height)),
            ),
            PATIENT_MERGE: (MergeBody, _rule(lambda v, c, stx, s, b: patients.merge(v, s, b))),
            ERASE_APPROVE: (
                EraseApproveBody,
                _rule(lambda v, c, stx, s, b: reads.approve_erasure(v, s, b, c.height)),
            ),
        }
        self._spike = reads.SpikeRule(
            reads=genesis.params.access_spike_reads,
            window_ms=genesis.params.access_spike_window_ms,
        )

    # ---- genesis -------------------------------------------------------------------

    def genesis_writes(self) -> dict[bytes, bytes | None]:
        view = StateView(lambda _k: None)
        for inst in self.genesis.institutions:
            if not INSTITUTION_RE.match(inst.name):
                raise InvalidTransaction(
                    f"bad institution name {inst.name!r}", code="GENESIS_INVALID"
                )
            view.put(k_institution(inst.name), Institution(name=inst.name, admin_id=inst.admin_id))
            view.put(
                k_identity(inst.admin_id),
                new_identity(inst.admin_id, Role.ADMIN.value, inst.name, 0, "genesis"),
            )
        by_name = {i.name for i in self.genesis.institutions}
        for val in self.genesis.validators:
            # a validator's node key is its institution's node identity (admitted to p2p,
            # it submits evidence; it has no record access)
            if val.name in by_name:
                view.put(
                    k_identity(val.id),
                    new_identity(val.id, Role.NODE.value, val.name, 0, "genesis"),
                )
        view.put(
            k_validators(),
            ValidatorList(validators=sorted(self.genesis.validators, key=lambda v: v.id)),
        )
        return view.writes

    def load_tree(self, items: list[tuple[bytes, bytes]]) -> bytes:
        self.tree = StateTree()
        self.tree.load(items)
        return self.tree.root()

    # ---- ABCI-shaped boundary ------------------------------------------------------

    def committed_view(self) -> StateView:
        return StateView(self._committed, self._committed_obj)

    def _committed_obj(self, key: bytes, type_: type[Any]) -> Any:
        hit = self._decoded.get(key, _MISSING)
        if hit is not _MISSING and (hit is None or type(hit) is type_):
            return hit
        raw = self._committed(key)
        value = None if raw is None else decode(raw, type_)
        if len(self._decoded) >= DECODED_CACHE:
            self._decoded.clear()
        self._decoded[key] = value
        return value

    def next_nonce(self, sender: str) -> int:
        raw = self._committed(k_nonce(sender))
        return 0 if raw is None else int.from_bytes(raw, "big")

    def check_tx(
        self, stx: SignedTx, expected_nonce: int, now_ms: int, *, relayed: bool = False
    ) -> None:
        """Admission check against committed state; raises a typed error.

        The signature must already be verified by the caller (exactly once).
        ``expected_nonce`` is the committed nonce plus this sender's pending
        transactions in the mempool. A ``relayed`` transaction (gossiped by the
        member that admitted it with the full check) gets only the cheap checks:
        chain, nonce order, active sender; the block's execution decides the rest.
        """
        tx = stx.tx
        if tx.chain_id != self.chain_id:
            raise InvalidTransaction(
                f"transaction is for chain {tx.chain_id!r}, this is {self.chain_id!r}",
                code="WRONG_CHAIN",
            )
        self._check_nonce(tx.nonce, expected_nonce)
        view = self.committed_view()
        sender = self._active_sender(view, tx.sender)
        if relayed:
            return
        ctx = BlockContext(height=-1, time_ms=now_ms, proposer="")
        result = self._run(view, ctx, stx, sender)
        if not result.ok and result.code not in INCLUDED_FAILURES:
            raise InvalidTransaction(result.message, code=result.code)

    def recheck_tx(self, stx: SignedTx) -> None:
        """Re-check a mempool transaction after a block: sender still enrolled and active."""
        self._active_sender(self.committed_view(), stx.tx.sender)

    def finalize_block(self, ctx: BlockContext, txs: list[SignedTx]) -> FinalizedBlock:
        """Execute ``txs`` in order against the committed state (signatures verified).

        Speculative: several blocks may be executed for one height (one per proposal);
        the state tree holds at most one of them until :meth:`commit` picks one.
        """
        self.abandon()
        view = self.committed_view()
        results: list[TxResult] = []
        self._block_updates = None
        for stx in txs:
            results.append(self._deliver(view, ctx, stx))
        updates, self._block_updates = self._block_updates, None
        undo = self.tree.apply(view.writes)
        fin = FinalizedBlock(
            results=results,
            app_hash=self.tree.root(),
            writes=view.writes,
            validator_updates=updates,
            undo=undo,
            tx_hashes=[t.hash for t in txs],
        )
        self._applied = fin
        return fin

    def abandon(self) -> None:
        """Take an executed, uncommitted block back out of the state tree."""
        if self._applied is not None:
            self.tree.revert(self._applied.undo)
            self._applied = None

    def commit(self, fin: FinalizedBlock | None = None) -> dict[bytes, bytes | None]:
        """Accept ``fin`` (default: the last executed block); return its writes to persist."""
        if fin is None:
            fin = self._applied
        if fin is None:
            raise RuntimeError("commit without finalize_block")
        if fin is not self._applied:
            self.abandon()
            fin.undo = self.tree.apply(fin.writes)
            if self.tree.root() != fin.app_hash:
                raise RuntimeError("re-applied block does not reproduce its app hash")
        self._applied = None
        for key in fin.writes:
            self._decoded.pop(key, None)
        return fin.writes

    def query_identity(self, id_: str) -> Identity | None:
        return self.committed_view().get(k_identity(id_), Identity)

    def query_record(self, record_id: str) -> RecordMeta | None:
        return self.committed_view().get(k_record(record_id), RecordMeta)

    # ---- execution -----------------------------------------------------------------

    @staticmethod
    def _check_nonce(nonce: int, expected: int) -> None:
        if nonce < expected:  # a replay: 409, as errors.py maps it
            raise Conflict(
                f"nonce {nonce} was already used (next is {expected})", code="NONCE_REPLAY"
            )
        if nonce > expected:
            raise InvalidTransaction(
                f"nonce {nonce} is ahead of the next nonce {expected}", code="NONCE_GAP"
            )

    def _active_sender(self, view: StateView, sender_id: str) -> Identity:
        sender = view.get(k_identity(sender_id), Identity)
        if sender is None:
            raise AuthError("sender is not an enrolled identity", code="UNKNOWN_IDENTITY")
        if sender.status != ACTIVE:
            raise AuthError("sender identity is suspended", code="IDENTITY_SUSPENDED")
        return sender

    def _deliver(self, view: StateView, ctx: BlockContext, stx: SignedTx) -> TxResult:
        tx = stx.tx
        try:
            if tx.chain_id != self.chain_id:
                raise InvalidTransaction("wrong chain", code="WRONG_CHAIN")
            nonce_raw = view.get_raw(k_nonce(tx.sender))
            expected = 0 if nonce_raw is None else int.from_bytes(nonce_raw, "big")
            self._check_nonce(tx.nonce, expected)
            sender = self._active_sender(view, tx.sender)
        except MedLedgerError as exc:
            return TxResult(code=exc.code, message=exc.message, events=[], data={})
        # The nonce is consumed by any authentic, in-order transaction.
        view.put(k_nonce(tx.sender), (tx.nonce + 1).to_bytes(8, "big"))
        return self._run(view, ctx, stx, sender)

    def _run(self, view: StateView, ctx: BlockContext, stx: SignedTx, sender: Identity) -> TxResult:
        handler = self._handlers.get(stx.tx.kind)
        if handler is None:
            return _fail("UNKNOWN_TX_KIND", f"unknown transaction kind {stx.tx.kind!r}")
        body_type, fn = handler
        body = stx.decoded_body
        if type(body) is not body_type:
            try:
                body = decode_canonical(stx.tx.body, body_type)
            except MedLedgerError as exc:
                return _fail("TX_MALFORMED", f"{stx.tx.kind} body: {exc.message}")
            stx.decoded_body = body
        via = ""
        delegated: bytes = getattr(body, "delegation", b"")
        if delegated:
            try:
                sender = self._grantor(view, ctx, stx, delegated)
            except MedLedgerError as exc:
                return _fail(exc.code, exc.message)
            via = stx.tx.sender
        child = view.child()
        try:
            result: TxResult = fn(child, ctx, stx, sender, body)
        except (
            ExecError,
            storage.StorageRuleError,
            consents.ConsentRuleError,
            reads.ReadRuleError,
            patients.PatientRuleError,
        ) as exc:
            return _fail(exc.code, exc.message)
        if via:
            result = _note_events(result, sender.id, f"via={via}")
        if result.ok or result.code in INCLUDED_FAILURES:
            view.merge(child)
        return result

    def _grantor(self, view: StateView, ctx: BlockContext, stx: SignedTx, raw: bytes) -> Identity:
        """The identity a delegated transaction acts for: the delegation must be valid
        at the block's time, name the sender as its delegate and carry the kind's
        scope, and its grantor must be active."""
        scope = DELEGATED_SCOPES.get(stx.tx.kind)
        if scope is None:
            raise ExecError(f"{stx.tx.kind} cannot be delegated", code="TOKEN_SCOPE")
        d = delegation.verify(
            raw, chain_id=self.chain_id, delegate=stx.tx.sender, scope=scope, now_ms=ctx.time_ms
        )
        return self._active_sender(view, d.grantor)

    def effective_reader(self, sender: Identity, body: ReadRecordBody, at_ms: int) -> Identity:
        """Who a committed ``record.read`` read for: its sender, or the grantor of its
        delegation (valid at ``at_ms``, the access event's block time), if still active
        (custody re-checks the policy for this identity before releasing a share)."""
        if not body.delegation:
            return sender
        view = self.committed_view()
        d = delegation.verify(
            body.delegation,
            chain_id=self.chain_id,
            delegate=sender.id,
            scope=delegation.SCOPE_READ,
            now_ms=at_ms,
        )
        return self._active_sender(view, d.grantor)

    # identity.enroll
    def _enroll(
        self, view: StateView, ctx: BlockContext, stx: SignedTx, sender: Identity, body: EnrollBody
    ) -> TxResult:
        _require(access.may_manage(sender, sender.institution), "NOT_AUTHORIZED")
        if not is_identity_id(body.id):
            raise ExecError("not a MedLedger identity ID", code="BAD_IDENTITY_ID")
        if body.role not in ROLES:
            raise ExecError(f"unknown role {body.role!r}", code="BAD_ROLE")
        if view.get_raw(k_identity(body.id)) is not None:
            raise ExecError("identity is already enrolled", code="ALREADY_ENROLLED")
        view.put(
            k_identity(body.id),
            new_identity(body.id, body.role, sender.institution, ctx.height, sender.id),
        )
        ev = enrollment_event(sender, body.id, body.role)
        return _ok([ev], {"id": body.id, "role": body.role, "institution": sender.institution})

    # identity.suspend
    def _suspend(
        self, view: StateView, ctx: BlockContext, stx: SignedTx, sender: Identity, body: SuspendBody
    ) -> TxResult:
        target = view.get(k_identity(body.id), Identity)
        if target is None:
            raise ExecError("identity is not enrolled", code="UNKNOWN_IDENTITY")
        _require(access.may_manage(sender, target.institution), "NOT_AUTHORIZED")
        if target.id == sender.id:
            raise ExecError("an admin cannot suspend itself", code="CANNOT_SUSPEND_SELF")
        if target.status == SUSPENDED:
            raise ExecError("identity is already suspended", code="ALREADY_SUSPENDED")
        if len(body.reason) > MAX_REASON_LEN:
            raise ExecError("reason is too long", code="TX_MALFORMED")
        view.put(
            k_identity(target.id),
            Identity(
                id=target.id,
                role=target.role,
                institution=target.institution,
                status=SUSPENDED,
                enrolled_height=target.enrolled_height,
                enrolled_by=target.enrolled_by,
            ),
        )
        ev = Event(
            action="suspend",
            actor=sender.id,
            subject=target.id,
            record_id="",
            outcome="ok",
            detail=body.reason,
        )
        return _ok([ev], {"id": target.id})

    # record.register
    def _register_record(
        self,
        view: StateView,
        ctx: BlockContext,
        stx: SignedTx,
        sender: Identity,
        body: RegisterRecordBody,
    ) -> TxResult:
        patient = view.get(k_identity(body.patient), Identity)
        if patient is None:
            raise ExecError("patient is not an enrolled identity", code="UNKNOWN_PATIENT")
        _require(access.may_write_for(sender, patient), "NOT_AUTHORIZED")
        if body.on_behalf_of:
            if body.delegation:
                raise ExecError(
                    "a registration is either delegated or on behalf of a device",
                    code="TX_MALFORMED",
                )
            device = view.get(k_identity(body.on_behalf_of), Identity)
            _require(access.may_act_as_gateway(sender, device), "NOT_AUTHORIZED")
        if not RECORD_TYPE_RE.match(body.type):
            raise ExecError("record type must match [a-z][a-z0-9_.-]{0,31}", code="BAD_RECORD_TYPE")
        if not is_cid(body.content_hash):
            raise ExecError("content hash is not a CIDv1", code="BAD_CID")
        if not 0 <= body.size < MAX_SIZE or not 0 <= body.chunk_count < MAX_SIZE:
            raise ExecError("size out of range", code="TX_MALFORMED")
        if body.part_of:
            patients.check_part_of(view, sender, patient.id, body.type, body.part_of)
        params = self.genesis.params
        fraction = (params.custody_threshold_num, params.custody_threshold_den)
        storage.check_layout(view, body, fraction)
        record_id = record_id_for(stx.hash)
        meta = RecordMeta(
            record_id=record_id,
            patient=patient.id,
            type=body.type,
            content_hash=body.content_hash,
            size=body.size,
            chunk_count=body.chunk_count,
            shard_root=body.shard_root,
            k=body.k,
            m=body.m,
            placement=body.placement,
            custodians=body.custodians,
            threshold=body.threshold,
            deidentified=body.deidentified,
            institution=sender.institution,
            creator=sender.id,
            created_ms=ctx.time_ms,
            height=ctx.height,
            erased_height=0,
            part_of=body.part_of,
            # the gateway deposited the key shares of a delegated registration
            depositor=stx.tx.sender if body.delegation else "",
        )
        view.put(k_record(record_id), meta)
        view.put(k_patient_record(patient.id, record_id), b"")
        patients.note_record(view, patient.id)
        if body.part_of:
            patients.count_part(view, body.part_of, +1)
        reads.count(view, k_stats("write", sender.institution, body.type, "-", "ok"))
        ev = Event(
            action="write",
            actor=sender.id,
            subject=patient.id,
            record_id=record_id,
            outcome="ok",
            detail=f"type={body.type} size={body.size}"
            + (f" on_behalf_of={body.on_behalf_of}" if body.on_behalf_of else "")
            + (f" part_of={body.part_of}" if body.part_of else ""),
        )
        return _ok([ev], {"record_id": record_id})

    # governance.propose / governance.vote / evidence.submit
    def _propose_member(
        self,
        view: StateView,
        ctx: BlockContext,
        stx: SignedTx,
        sender: Identity,
        body: ProposeMemberBody,
    ) -> TxResult:
        return self._membership_tx(
            lambda: membership.propose(view, ctx.height, stx.hash, sender, body)
        )

    def _vote_member(
        self,
        view: StateView,
        ctx: BlockContext,
        stx: SignedTx,
        sender: Identity,
        body: VoteMemberBody,
    ) -> TxResult:
        return self._membership_tx(lambda: membership.vote(view, ctx.height, sender, body))

    def _submit_evidence(
        self,
        view: StateView,
        ctx: BlockContext,
        stx: SignedTx,
        sender: Identity,
        body: EvidenceBody,
    ) -> TxResult:
        return self._membership_tx(
            lambda: membership.submit_evidence(view, ctx.height, sender, body, self.chain_id)
        )

    def _membership_tx(self, fn: Callable[[], membership.Outcome]) -> TxResult:
        try:
            outcome = fn()
        except membership.MembershipError as exc:
            raise ExecError(exc.message, code=exc.code)
        if outcome.validator_updates is not None:
            self._block_updates = outcome.validator_updates
        return _ok(outcome.events, outcome.data)

    @staticmethod
    def _storage_tx(
        fn: Callable[[StateView, Identity, Any], list[Event]],
    ) -> Callable[..., TxResult]:
        def run(
            view: StateView, ctx: BlockContext, stx: SignedTx, sender: Identity, body: Any
        ) -> TxResult:
            return _ok(fn(view, sender, body), {"record_id": body.record_id})

        return run

    def query_validators(self) -> list[Validator]:
        return membership.current_validators(self.committed_view())

    # record.read: the access event; custodians release shares only for an allowed one.
    def _read_record(
        self,
        view: StateView,
        ctx: BlockContext,
        stx: SignedTx,
        sender: Identity,
        body: ReadRecordBody,
    ) -> TxResult:
        if body.on_behalf_of:
            if body.delegation:
                raise ExecError(
                    "a read is either delegated or on behalf of a device", code="TX_MALFORMED"
                )
            device = view.get(k_identity(body.on_behalf_of), Identity)
            _require(access.may_act_as_gateway(sender, device), "NOT_AUTHORIZED")
        out = reads.read(view, sender, body, ctx.time_ms, self._spike)
        result = TxResult(
            code="OK" if out.decision.allowed else "ACCESS_DENIED",
            message="" if out.decision.allowed else f"{out.decision.rule}: {out.decision.reason}",
            events=out.events,
            data=out.data,
        )
        if body.on_behalf_of:
            result = _note_events(result, sender.id, f"on_behalf_of={body.on_behalf_of}")
        return result

    def evaluate_read(self, sender: Identity, body: ReadRecordBody, now_ms: int) -> access.Decision:
        """The policy's decision on a read against committed state (custody re-checks
        it before releasing a share, so a revocation since the access event wins)."""
        try:
            _record, decision = reads.evaluate(self.committed_view(), sender, body, now_ms)
        except reads.ReadRuleError as exc:
            return access.Decision(False, exc.message, exc.code.lower())
        return decision


def _note_events(result: TxResult, actor: str, note: str) -> TxResult:
    """``result`` with ``note`` appended to the detail of the events ``actor`` acted in."""
    events = [
        msgspec.structs.replace(e, detail=f"{e.detail}; {note}" if e.detail else note)
        if e.actor == actor
        else e
        for e in result.events
    ]
    return msgspec.structs.replace(result, events=events)


def _ok(events: list[Event], data: dict[str, str]) -> TxResult:
    return TxResult(code="OK", message="", events=events, data=data)


def _fail(code: str, message: str) -> TxResult:
    return TxResult(code=code, message=message, events=[], data={})


def _rule(
    fn: Callable[
        [StateView, BlockContext, SignedTx, Identity, Any], tuple[list[Event], dict[str, str]]
    ],
) -> Callable[..., TxResult]:
    """A handler from a pure rule returning (events, data)."""

    def run(
        view: StateView, ctx: BlockContext, stx: SignedTx, sender: Identity, body: Any
    ) -> TxResult:
        events, data = fn(view, ctx, stx, sender, body)
        return _ok(events, data)

    return run


def _require(decision: access.Decision, code: str) -> None:
    if not decision.allowed:
        raise ExecError(decision.reason, code=code)


def encode_value(value: Record) -> bytes:
    return encode(value)

"""Shared builders for the unit tests: deterministic keys, genesis, an in-memory chain."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from hypothesis import settings

from medledger.app.application import Application, BlockContext, FinalizedBlock
from medledger.app.model import (
    ENROLL,
    READ_RECORD,
    REGISTER_RECORD,
    EnrollBody,
    GrantConsentBody,
    ReadRecordBody,
    RegisterRecordBody,
)
from medledger.crypto.cid import cid_for
from medledger.crypto.hashing import sha256
from medledger.crypto.keys import PrivateKey
from medledger.ledger.block import (
    Commit,
    Header,
    TxResult,
    Validator,
    result_leaf,
    sign_commit_vote,
    validators_hash,
)
from medledger.ledger.genesis import ChainParams, Genesis, InstitutionGenesis
from medledger.ledger.merkle import merkle_root
from medledger.ledger.statetree import StateTree
from medledger.ledger.tx import SignedTx, decode_envelope, make_tx

CHAIN_ID = "medledger-unit"

# Property tests are derandomized (same examples on every run) and never time out.
PROPS = settings(deadline=None, derandomize=True, database=None, max_examples=100)
GENESIS_TIME_MS = 1_700_000_000_000


def key(name: str) -> PrivateKey:
    """A deterministic Ed25519 key named ``name``."""
    return PrivateKey(sha256(b"medledger-unit-test/" + name.encode()))


def admin_key(institution: str) -> PrivateKey:
    return key(f"admin@{institution}")


def validator(name: str, power: int = 1) -> Validator:
    k = key(f"validator/{name}")
    return Validator(name=name, id=k.id, public_key=k.public_key.raw, power=power)


def make_genesis(
    institutions: Sequence[str] = ("alpha", "beta"),
    validators: Sequence[str] | None = None,
    *,
    chain_id: str = CHAIN_ID,
    params: ChainParams | None = None,
) -> Genesis:
    """A genesis; every institution runs a validator unless ``validators`` names them
    (record custodians must be validator institutions)."""
    if validators is None:
        validators = institutions
    return Genesis(
        chain_id=chain_id,
        genesis_time_ms=GENESIS_TIME_MS,
        institutions=[
            InstitutionGenesis(
                name=name,
                admin_id=admin_key(name).id,
                admin_public_key=admin_key(name).public_key.raw,
            )
            for name in institutions
        ],
        validators=[validator(v) for v in validators],
        params=params or ChainParams(),
    )


def apply_writes(state: dict[bytes, bytes], writes: dict[bytes, bytes | None]) -> None:
    for k, v in writes.items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v


def full_root(state: dict[bytes, bytes]) -> bytes:
    """The app hash of ``state`` computed from scratch."""
    tree = StateTree()
    tree.load(state.items())
    return tree.root()


def signed(raw: bytes) -> SignedTx:
    stx = decode_envelope(raw)
    stx.verify_signature()
    return stx


def content_cid(tag: str = "content") -> str:
    return cid_for(b"manifest of " + tag.encode())


def register_body(patient: str, **overrides: Any) -> RegisterRecordBody:
    fields: dict[str, Any] = {
        "patient": patient,
        "type": "imaging.ct",
        "content_hash": content_cid(patient),
        "size": 1234,
        "chunk_count": 1,
        "shard_root": bytes(32),
        "k": 1,
        "m": 0,
        "placement": ["alpha"],
        "custodians": ["alpha"],
        "threshold": 1,
    }
    fields.update(overrides)
    return RegisterRecordBody(**fields)


def grant_body(
    patient: str,
    actor: str,
    purposes: Sequence[str] = ("treatment",),
    *,
    kind: str = "identity",
    record_ids: Sequence[str] = (),
    types: Sequence[str] = (),
    start_ms: int = 0,
    end_ms: int = 0,
    permit: bool = True,
) -> GrantConsentBody:
    """A consent.grant body; lists are taken as given (sorted or not)."""
    return GrantConsentBody(
        patient=patient,
        actor_kind=kind,
        actor=actor,
        purposes=list(purposes),
        record_ids=list(record_ids),
        types=list(types),
        start_ms=start_ms,
        end_ms=end_ms,
        permit=permit,
    )


class Chain:
    """An Application over a plain dict, driven block by block as node.py does."""

    def __init__(self, genesis: Genesis | None = None) -> None:
        self.genesis = genesis or make_genesis()
        self.state: dict[bytes, bytes] = {}
        self.app = Application(self.genesis, self.state.get)
        apply_writes(self.state, self.app.genesis_writes())
        self.app_hash = self.app.load_tree(list(self.state.items()))
        self.height = 0
        self.time_ms = self.genesis.genesis_time_ms
        self._pending_nonce: dict[str, int] = {}
        self.blocks: list[tuple[list[SignedTx], FinalizedBlock]] = []

    # ---- transactions ---------------------------------------------------------------

    def raw_tx(
        self,
        signer: PrivateKey,
        kind: str,
        body: Any,
        *,
        nonce: int | None = None,
        chain_id: str | None = None,
    ) -> bytes:
        if nonce is None:
            nonce = self._pending_nonce.get(signer.id, self.app.next_nonce(signer.id))
            self._pending_nonce[signer.id] = nonce + 1
        return make_tx(
            signer,
            chain_id=self.genesis.chain_id if chain_id is None else chain_id,
            nonce=nonce,
            kind=kind,
            body=body,
        )

    def tx(self, signer: PrivateKey, kind: str, body: Any, **kw: Any) -> SignedTx:
        return signed(self.raw_tx(signer, kind, body, **kw))

    def check(self, stx: SignedTx, expected_nonce: int | None = None) -> None:
        """check_tx; by default the mempool expects exactly this tx's nonce."""
        if expected_nonce is None:
            expected_nonce = stx.tx.nonce
        self.app.check_tx(stx, expected_nonce, self.time_ms + 500)

    # ---- blocks ---------------------------------------------------------------------

    def block(self, txs: Iterable[SignedTx]) -> FinalizedBlock:
        txs = list(txs)
        self.height += 1
        self.time_ms += 1000
        ctx = BlockContext(height=self.height, time_ms=self.time_ms, proposer="proposer")
        fin = self.app.finalize_block(ctx, txs)
        apply_writes(self.state, self.app.commit())
        self.app_hash = fin.app_hash
        self._pending_nonce.clear()
        self.blocks.append((txs, fin))
        return fin

    def run(self, signer: PrivateKey, kind: str, body: Any, **kw: Any) -> TxResult:
        """One transaction in a block of its own; its result."""
        return self.block([self.tx(signer, kind, body, **kw)]).results[0]

    # ---- conveniences ---------------------------------------------------------------

    def enroll(self, admin: PrivateKey, member: PrivateKey, role: str) -> TxResult:
        res = self.run(admin, ENROLL, EnrollBody(id=member.id, role=role))
        assert res.ok, res
        return res

    def register(self, author: PrivateKey, patient: PrivateKey, **overrides: Any) -> TxResult:
        return self.run(author, REGISTER_RECORD, register_body(patient.id, **overrides))

    def read(
        self,
        reader: PrivateKey,
        record_id: str,
        purpose: str = "treatment",
        *,
        break_glass: bool = False,
        reason: str = "",
    ) -> TxResult:
        body = ReadRecordBody(
            record_id=record_id, purpose=purpose, break_glass=break_glass, reason=reason
        )
        return self.run(reader, READ_RECORD, body)


def make_header(
    genesis: Genesis,
    height: int,
    time_ms: int,
    prev_hash: bytes,
    txs: list[SignedTx],
    results: list[TxResult],
    app_hash: bytes,
    validators: list[Validator],
    proposer: str = "proposer",
) -> Header:
    """A header built exactly as ``node.Node._produce`` builds one."""
    return Header(
        chain_id=genesis.chain_id,
        height=height,
        time_ms=time_ms,
        prev_hash=prev_hash,
        tx_root=merkle_root([t.raw for t in txs]),
        results_root=merkle_root(
            [result_leaf(t.hash, r) for t, r in zip(txs, results, strict=True)]
        ),
        app_hash=app_hash,
        validators_hash=validators_hash(validators),
        proposer=proposer,
        tx_count=len(txs),
    )


def make_commit(
    header: Header, signers: Sequence[PrivateKey], round_: int = 0, chain_id: str = CHAIN_ID
) -> Commit:
    return Commit(
        height=header.height,
        round=round_,
        block_hash=header.hash(),
        signatures=[
            sign_commit_vote(k, chain_id, header, round_, header.time_ms + i)
            for i, k in enumerate(signers)
        ],
    )


class World:
    """A chain with two institutions (both validators) and one identity of every role.

    alpha: admin, clinician, clinician2, service, patient, patient2, researcher,
    regulator, pharmacy, insurer, admin2 (a second admin); beta: admin, clinician,
    clinician2, service, patient. ``record_id`` is a record of alpha's patient written
    by alpha's clinician (custodians ["alpha"], threshold 1).
    """

    ALPHA_ROLES = (
        "clinician",
        "clinician2",
        "service",
        "patient",
        "patient2",
        "researcher",
        "regulator",
        "pharmacy",
        "insurer",
        "admin2",
    )
    BETA_ROLES = ("clinician", "clinician2", "service", "patient")

    def __init__(self, genesis: Genesis | None = None) -> None:
        self.chain = Chain(genesis)
        self.keys: dict[str, PrivateKey] = {
            "alpha.admin": admin_key("alpha"),
            "beta.admin": admin_key("beta"),
        }
        txs = []
        for inst, roles in (("alpha", self.ALPHA_ROLES), ("beta", self.BETA_ROLES)):
            admin = self.keys[f"{inst}.admin"]
            for name in roles:
                k = key(f"{name}@{inst}")
                self.keys[f"{inst}.{name}"] = k
                role = name.rstrip("2")
                txs.append(self.chain.tx(admin, ENROLL, EnrollBody(id=k.id, role=role)))
        fin = self.chain.block(txs)
        assert all(r.ok for r in fin.results), fin.results
        res = self.chain.register(self["alpha.clinician"], self["alpha.patient"])
        assert res.ok, res
        self.record_id = res.data["record_id"]

    def __getitem__(self, name: str) -> PrivateKey:
        return self.keys[name]

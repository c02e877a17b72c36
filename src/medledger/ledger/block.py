"""Blocks, headers, commits and transaction results.

Execution is *same-block* (see docs/adr/0002-same-block-execution.md): the header
of block H carries the app hash after executing H and the Merkle root of H's
transaction results, so a client proves a transaction, its outcome and a state
value with the header of H and its commit alone.
"""

from __future__ import annotations

import hashlib

from medledger.codec import Record, encode
from medledger.crypto.keys import PrivateKey, PublicKey
from medledger.errors import IntegrityError

VOTE_DOMAIN = b"medledger/vote/v1\x00"
PRECOMMIT = 2


class Header(Record, frozen=True):
    chain_id: str
    height: int
    time_ms: int  # milliseconds since the Unix epoch (BFT time)
    prev_hash: bytes
    tx_root: bytes
    results_root: bytes
    app_hash: bytes
    validators_hash: bytes
    proposer: str
    tx_count: int

    def hash(self) -> bytes:
        return hashlib.sha256(encode(self)).digest()


class Event(Record, frozen=True):
    """An audit event emitted by a transaction."""

    action: str  # enroll, suspend, write, read, ...
    actor: str
    subject: str  # identity the event concerns (patient for records)
    record_id: str
    outcome: str  # allowed | denied | ok
    detail: str


class TxResult(Record, frozen=True):
    code: str  # "OK" or a stable error code
    message: str
    events: list[Event]
    data: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.code == "OK"


class Vote(Record, frozen=True):
    chain_id: str
    type: int
    height: int
    round: int
    block_hash: bytes
    time_ms: int
    validator: str


class CommitSig(Record, frozen=True):
    validator: str
    public_key: bytes
    time_ms: int
    signature: bytes


class Commit(Record, frozen=True):
    height: int
    round: int
    block_hash: bytes
    signatures: list[CommitSig]


class Validator(Record, frozen=True):
    name: str
    id: str
    public_key: bytes
    power: int


def validators_hash(validators: list[Validator]) -> bytes:
    return hashlib.sha256(encode(validators)).digest()


def vote_sign_bytes(vote: Vote) -> bytes:
    return VOTE_DOMAIN + encode(vote)


def sign_commit_vote(
    key: PrivateKey, chain_id: str, header: Header, round_: int, time_ms: int
) -> CommitSig:
    vote = Vote(
        chain_id=chain_id,
        type=PRECOMMIT,
        height=header.height,
        round=round_,
        block_hash=header.hash(),
        time_ms=time_ms,
        validator=key.id,
    )
    return CommitSig(
        validator=key.id,
        public_key=key.public_key.raw,
        time_ms=time_ms,
        signature=key.sign(vote_sign_bytes(vote)),
    )


def commit_vote(chain_id: str, commit: Commit, sig: CommitSig) -> Vote:
    """The precommit that ``sig`` of ``commit`` signs."""
    return Vote(
        chain_id=chain_id,
        type=PRECOMMIT,
        height=commit.height,
        round=commit.round,
        block_hash=commit.block_hash,
        time_ms=sig.time_ms,
        validator=sig.validator,
    )


def verify_commit(header: Header, commit: Commit, validators: list[Validator]) -> None:
    """Raise unless ``commit`` carries precommits of more than 2/3 of the voting power."""
    block_hash = header.hash()
    if commit.height != header.height or commit.block_hash != block_hash:
        raise IntegrityError("commit is for another block", code="BAD_COMMIT")
    if validators_hash(validators) != header.validators_hash:
        raise IntegrityError("validator set does not match the header", code="BAD_COMMIT")
    by_id = {v.id: v for v in validators}
    total = sum(v.power for v in validators)
    signed = 0
    seen: set[str] = set()
    for sig in commit.signatures:
        val = by_id.get(sig.validator)
        if val is None or sig.validator in seen or sig.public_key != val.public_key:
            raise IntegrityError("commit has an unknown or repeated signer", code="BAD_COMMIT")
        seen.add(sig.validator)
        vote = commit_vote(header.chain_id, commit, sig)
        try:
            PublicKey(val.public_key).verify(vote_sign_bytes(vote), sig.signature)
        except Exception:
            raise IntegrityError("commit signature does not verify", code="BAD_COMMIT")
        signed += val.power
    if signed * 3 <= total * 2:
        raise IntegrityError("commit lacks 2/3+ of the voting power", code="BAD_COMMIT")


def result_leaf(tx_hash: bytes, result: TxResult) -> bytes:
    """The leaf of the results tree: the tx hash bound to its canonical result."""
    return tx_hash + encode(result)

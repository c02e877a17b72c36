"""Audit proof bundles: events a client can verify offline against signed headers.

A bundle is ``MAGIC || canonical msgpack(AuditProofBundle)``. Every field is
checked by :func:`verify_bundle`, and the encoding is canonical, so changing
any byte of a bundle makes verification fail.

For each entry the verifier checks: the header's commit carries 2/3+ of the
validator set's power (and the set matches the header); the transaction is in
the header's transaction tree and its signature verifies; its result is in the
header's results tree; and it reports the result's events about the subject.
"""

from __future__ import annotations

from dataclasses import dataclass

from medledger.codec import Record, decode_canonical, encode
from medledger.errors import DecodeError, IntegrityError, MedLedgerError
from medledger.ledger.block import (
    Commit,
    Event,
    Header,
    TxResult,
    Validator,
    result_leaf,
    verify_commit,
)
from medledger.ledger.merkle import leaf_hash, root_from_proof, verify_inclusion
from medledger.ledger.tx import decode_envelope

MAGIC = b"MLPROOF1"


class SignedHeader(Record, frozen=True):
    header: Header
    commit: Commit
    validators: list[Validator]  # the set that signed this height


class AuditProofEntry(Record, frozen=True):
    height: int
    tx_index: int
    tx: bytes
    tx_path: list[bytes]
    result: TxResult
    result_path: list[bytes]


class AuditProofBundle(Record, frozen=True):
    chain_id: str
    subject: str
    headers: list[SignedHeader]
    entries: list[AuditProofEntry]


@dataclass(frozen=True, slots=True)
class VerifiedEvent:
    height: int
    time_ms: int
    tx_index: int
    tx_hash: str
    event: Event


def encode_bundle(bundle: AuditProofBundle) -> bytes:
    return MAGIC + encode(bundle)


def decode_bundle(data: bytes) -> AuditProofBundle:
    if not data.startswith(MAGIC):
        raise IntegrityError("not a MedLedger audit proof file", code="BAD_PROOF")
    try:
        return decode_canonical(data[len(MAGIC) :], AuditProofBundle)
    except DecodeError as exc:
        raise IntegrityError(f"proof file is damaged: {exc.message}", code="BAD_PROOF")


def verify_bundle(
    data: bytes, *, trusted_validators: list[Validator] | None = None
) -> list[VerifiedEvent]:
    """Verify every entry; return the subject's events. Raise on any problem."""
    bundle = decode_bundle(data)
    headers: dict[int, Header] = {}
    for sh in bundle.headers:
        h = sh.header
        if h.chain_id != bundle.chain_id or h.height in headers:
            raise IntegrityError("header for another chain or repeated", code="BAD_PROOF")
        if trusted_validators is not None and encode(
            sorted(trusted_validators, key=lambda v: v.id)
        ) != encode(sorted(sh.validators, key=lambda v: v.id)):
            raise IntegrityError(
                f"header {h.height} is signed by a validator set other than the trusted one",
                code="BAD_PROOF",
            )
        try:
            verify_commit(h, sh.commit, sh.validators)
        except IntegrityError as exc:
            raise IntegrityError(f"header {h.height}: {exc.message}", code="BAD_PROOF")
        headers[h.height] = h
    out: list[VerifiedEvent] = []
    seen: set[tuple[int, int]] = set()
    used: set[int] = set()
    last = (-1, -1)
    for e in bundle.entries:
        pos = (e.height, e.tx_index)
        if pos in seen or pos <= last:
            raise IntegrityError("entries repeated or out of order", code="BAD_PROOF")
        seen.add(pos)
        last = pos
        header = headers.get(e.height)
        if header is None:
            raise IntegrityError(f"no signed header for height {e.height}", code="BAD_PROOF")
        used.add(e.height)
        try:
            stx = decode_envelope(e.tx)
            stx.verify_signature()
        except MedLedgerError:
            raise IntegrityError(
                "a transaction in the proof is not validly signed", code="BAD_PROOF"
            )
        if stx.tx.chain_id != bundle.chain_id:
            raise IntegrityError("transaction is for another chain", code="BAD_PROOF")
        verify_inclusion(e.tx, e.tx_index, header.tx_count, e.tx_path, header.tx_root)
        rl = leaf_hash(result_leaf(stx.hash, e.result))
        if root_from_proof(rl, e.tx_index, header.tx_count, e.result_path) != header.results_root:
            raise IntegrityError("result is not in the block's results tree", code="BAD_PROOF")
        events = [ev for ev in e.result.events if ev.subject == bundle.subject]
        if not events:
            raise IntegrityError("entry has no event about the subject", code="BAD_PROOF")
        for ev in events:
            if ev.actor != stx.tx.sender:
                raise IntegrityError("event actor is not the transaction sender", code="BAD_PROOF")
            out.append(
                VerifiedEvent(
                    height=e.height,
                    time_ms=header.time_ms,
                    tx_index=e.tx_index,
                    tx_hash=stx.hash.hex(),
                    event=ev,
                )
            )
    if used != set(headers):
        raise IntegrityError("proof carries headers no entry uses", code="BAD_PROOF")
    return out

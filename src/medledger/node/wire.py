"""Messages exchanged between member nodes over ``p2p`` (canonical msgpack).

Every message is ``Envelope(kind, body)``; ``body`` is the canonical encoding of
the kind's struct. Nodes verify every signature they relay or act on; the p2p
layer only authenticates which member sent the bytes.
"""

from __future__ import annotations

from typing import Any

from medledger.codec import Record, decode, encode
from medledger.consensus.types import SignedProposal, SignedVote
from medledger.errors import DecodeError, InvalidInput
from medledger.ledger.block import Commit, Header

PROPOSAL = 1
VOTE = 2
TXS = 3
STATUS = 4
BLOCK_REQUEST = 5
BLOCK_RESPONSE = 6
# 7 and 8 were chunk requests: shards now move over the storage services' HTTP API
KEY_REQUEST = 9
KEY_RESPONSE = 10
DEPOSIT_REQUEST = 11
DEPOSIT_RESPONSE = 12


class Envelope(Record, frozen=True):
    kind: int
    body: bytes


class Block(Record, frozen=True):
    """A proposed or committed block: header, transactions, and the commit of the
    previous height that the header's BFT time is derived from."""

    header: Header
    txs: list[bytes]
    last_commit: Commit | None


class ProposalMsg(Record, frozen=True):
    proposal: SignedProposal
    block: Block


class VoteMsg(Record, frozen=True):
    vote: SignedVote


class TxsMsg(Record, frozen=True):
    txs: list[bytes]


class StatusMsg(Record, frozen=True):
    height: int
    block_hash: bytes


class BlockRequest(Record, frozen=True):
    height: int


class BlockResponse(Record, frozen=True):
    height: int
    block: Block | None
    commit: Commit | None


class KeyRequest(Record, frozen=True):
    """Release your share of a record's key to this requester (a relayed read)."""

    request_id: int
    record_id: str
    access_tx: bytes
    requester_public_key: bytes
    min_height: int  # the access event's height: the holder waits to have committed it


class KeyResponse(Record, frozen=True):
    request_id: int
    sealed_key: bytes  # the custodian's key share, sealed to the requester
    error: str
    message: str
    status: int  # the error's HTTP status (0 when released)


class SignedRequest(Record, frozen=True):
    """A client's signed API request, forwarded as the client signed it (see
    ``api.signing``): a custodian verifies the client's signature itself."""

    public_key: bytes
    time_ms: int
    signature: bytes
    path: str
    body: bytes


class DepositRequest(Record, frozen=True):
    """Keep your share of a deposit (the client's signed deposit request)."""

    request_id: int
    request: SignedRequest
    min_height: int  # the relaying node's height: the custodian waits to have committed it


class DepositResponse(Record, frozen=True):
    request_id: int
    error: str  # "" when the share is kept
    message: str
    status: int


_TYPES: dict[int, type[Any]] = {
    PROPOSAL: ProposalMsg,
    VOTE: VoteMsg,
    TXS: TxsMsg,
    STATUS: StatusMsg,
    BLOCK_REQUEST: BlockRequest,
    BLOCK_RESPONSE: BlockResponse,
    KEY_REQUEST: KeyRequest,
    KEY_RESPONSE: KeyResponse,
    DEPOSIT_REQUEST: DepositRequest,
    DEPOSIT_RESPONSE: DepositResponse,
}
_KINDS = {t: k for k, t in _TYPES.items()}


def pack(message: Record) -> bytes:
    return encode(Envelope(kind=_KINDS[type(message)], body=encode(message)))


def unpack(data: bytes) -> Record:
    """Decode a peer's message; raise :class:`InvalidInput` on anything malformed.

    Strict typed decoding, but no canonical re-encoding check: nothing is hashed or
    verified over a message's own bytes (headers, votes and proposals are hashed
    and signed over their re-encoded canonical form, transactions over their own
    envelope bytes), and re-encoding every block would double the decode cost.
    """
    try:
        env = decode(data, Envelope)
        type_ = _TYPES.get(env.kind)
        if type_ is None:
            raise InvalidInput("unknown message kind", code="BAD_MESSAGE")
        msg: Record = decode(env.body, type_)
        return msg
    except DecodeError as exc:
        raise InvalidInput(f"malformed peer message: {exc.message}", code="BAD_MESSAGE")

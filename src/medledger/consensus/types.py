"""Values shared by the Tendermint core, its driver and the simulator.

Names follow the paper (Buchman, Kwon, Milosevic, "The latest gossip on BFT
consensus", arXiv:1807.04938): heights, rounds, steps propose/prevote/precommit,
``lockedValue``/``lockedRound``, ``validValue``/``validRound``.

The core sees blocks only as 32-byte hashes; a ``nil`` vote has the empty hash
``NIL``. Everything is integer arithmetic: no floats, no clock, no dict order.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from medledger.codec import Record, encode
from medledger.crypto.keys import PrivateKey, PublicKey
from medledger.ledger.block import PRECOMMIT, Vote, vote_sign_bytes

NIL = b""
PREVOTE = 1
PROPOSAL_DOMAIN = b"medledger/proposal/v1\x00"

__all__ = [
    "NIL",
    "PRECOMMIT",
    "PREVOTE",
    "Proposal",
    "SignedProposal",
    "SignedVote",
    "Step",
    "TimeoutConfig",
    "Vote",
]


class Step(IntEnum):
    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


class Proposal(Record, frozen=True):
    chain_id: str
    height: int
    round: int
    pol_round: int  # the paper's validRound; -1 for none
    block_hash: bytes
    time_ms: int
    proposer: str

    def sign_bytes(self) -> bytes:
        return PROPOSAL_DOMAIN + encode(self)


class SignedProposal(Record, frozen=True):
    proposal: Proposal
    signature: bytes

    @classmethod
    def create(cls, key: PrivateKey, proposal: Proposal) -> SignedProposal:
        return cls(proposal=proposal, signature=key.sign(proposal.sign_bytes()))

    def verify(self, public_key: bytes) -> None:
        PublicKey(public_key).verify(self.proposal.sign_bytes(), self.signature)


class SignedVote(Record, frozen=True):
    vote: Vote  # ledger.block.Vote: chain_id, type, height, round, block_hash, time_ms, validator
    signature: bytes

    @classmethod
    def create(cls, key: PrivateKey, vote: Vote) -> SignedVote:
        return cls(vote=vote, signature=key.sign(vote_sign_bytes(vote)))

    def verify(self, public_key: bytes) -> None:
        PublicKey(public_key).verify(vote_sign_bytes(self.vote), self.signature)


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    """Round timeouts in ms: ``base + round * delta``, so they grow per round."""

    propose_ms: int = 1000
    propose_delta_ms: int = 500
    prevote_ms: int = 500
    prevote_delta_ms: int = 500
    precommit_ms: int = 500
    precommit_delta_ms: int = 500

    def propose(self, round_: int) -> int:
        return self.propose_ms + round_ * self.propose_delta_ms

    def prevote(self, round_: int) -> int:
        return self.prevote_ms + round_ * self.prevote_delta_ms

    def precommit(self, round_: int) -> int:
        return self.precommit_ms + round_ * self.precommit_delta_ms

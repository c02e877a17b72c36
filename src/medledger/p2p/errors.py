"""The p2p error: one class, a stable code per failure.

===================  ==========================================================
code                 meaning
===================  ==========================================================
CONNECT_FAILED       the TCP connection could not be opened (refused, timeout)
HANDSHAKE_FAILED     bad hello, bad signature, tampered handshake, peer closed
                     or timed out during the handshake
WRONG_CHAIN          the peer speaks for another chain ID
PEER_NOT_ALLOWED     the peer proved its key, but the policy refuses that key
FRAME_TOO_LARGE      a frame (sent or received) exceeds the size bound
FRAME_INVALID        a frame fails authentication: tampered, replayed,
                     reordered, truncated or from another session
CONNECTION_CLOSED    the stream ended (or the connection was closed locally)
===================  ==========================================================

Every code except ``FRAME_TOO_LARGE`` on the sending side ends the connection.
"""

from __future__ import annotations

from typing import Any

from medledger.errors import MedLedgerError

CONNECT_FAILED = "CONNECT_FAILED"
HANDSHAKE_FAILED = "HANDSHAKE_FAILED"
WRONG_CHAIN = "WRONG_CHAIN"
PEER_NOT_ALLOWED = "PEER_NOT_ALLOWED"
FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
FRAME_INVALID = "FRAME_INVALID"
CONNECTION_CLOSED = "CONNECTION_CLOSED"

CODES = frozenset(
    {
        CONNECT_FAILED,
        HANDSHAKE_FAILED,
        WRONG_CHAIN,
        PEER_NOT_ALLOWED,
        FRAME_TOO_LARGE,
        FRAME_INVALID,
        CONNECTION_CLOSED,
    }
)


class P2PError(MedLedgerError):
    """A transport failure between members. ``code`` is always one of :data:`CODES`."""

    http_status = 503
    default_code = CONNECTION_CLOSED

    def __init__(self, message: str, *, code: str, **details: Any) -> None:
        if code not in CODES:
            raise ValueError(f"unknown p2p error code {code!r}")
        super().__init__(message, code=code, **details)

"""Authenticated, encrypted connections between consortium members (see ``docs/p2p.md``).

* ``handshake``: the sans-I/O Station-to-Station handshake and frame encryption;
* ``connection``: :class:`SecureConnection`, ``open_connection``, ``start_server`` (asyncio);
* ``peers``: :class:`PeerManager`, one live connection per peer, queues, reconnects.

This package imports nothing above ``crypto``: no app, consensus, node, api or storage.
"""

from medledger.p2p.connection import SecureConnection, open_connection, start_server
from medledger.p2p.errors import P2PError
from medledger.p2p.handshake import DEFAULT_MAX_FRAME_SIZE, PROTOCOL_VERSION, Role, Session
from medledger.p2p.peers import PeerAddress, PeerManager, backoff_delay

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "P2PError",
    "PeerAddress",
    "PeerManager",
    "Role",
    "SecureConnection",
    "Session",
    "backoff_delay",
    "open_connection",
    "start_server",
]

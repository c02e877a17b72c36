"""Keep one live, authenticated connection to every consortium peer.

Links and their life
--------------------
Each :class:`SecureConnection` is wrapped in a *link* with a bounded outgoing queue,
a writer task and a reader task. A peer has at most one *current* link (the one
``send`` and ``broadcast`` use). Both sides dial every peer, so two links to the
same peer can exist for a moment; the rule that both sides apply independently is:

* the link dialed by the peer with the smaller ID wins over one dialed by the larger;
* between two links dialed by the same side, the newer wins (the dialer gave up the
  older one).

A losing link is *retired*, not cut: it accepts no new messages, its writer flushes
what it already queued and half-closes, and its reader keeps delivering until the
peer half-closes too (or ``drain_timeout`` passes). Meanwhile the current link's
reader holds its messages back, so messages from one peer are delivered in the order
the peer sent them even across the switch. A clean end of stream from the peer on the
current link is treated the same way. Errors (tampered frame, reset, overflow,
removal, ``stop``) abort the link at once.

A peer whose outgoing queue overflows (``queue_limit`` messages or ``queue_bytes``
bytes) is disconnected: its queued messages are dropped and counted
(``queue_overflows``, ``messages_dropped``), and the dial loop reconnects later.
``send`` and ``broadcast`` never wait for the network.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from medledger.crypto.keys import PUBLIC_KEY_SIZE, PrivateKey, identity_id_for
from medledger.errors import InvalidInput, MedLedgerError
from medledger.log import get_logger
from medledger.p2p.connection import SecureConnection, _Listener, open_connection, serve
from medledger.p2p.errors import CONNECTION_CLOSED, FRAME_TOO_LARGE, P2PError
from medledger.p2p.handshake import DEFAULT_MAX_FRAME_SIZE

__all__ = ["PeerAddress", "PeerManager", "backoff_delay"]

log = get_logger("medledger.p2p")

OnMessage = Callable[[str, bytes], Awaitable[None] | None]


@dataclass(frozen=True)
class PeerAddress:
    """Where to dial a peer, and the Ed25519 key it must prove."""

    id: str
    public_key: bytes
    host: str
    port: int

    def __post_init__(self) -> None:
        if len(self.public_key) != PUBLIC_KEY_SIZE:
            raise InvalidInput("peer public key must be 32 bytes", code="BAD_PUBLIC_KEY")
        if self.id != identity_id_for(self.public_key):
            raise InvalidInput("peer ID does not match its public key", code="BAD_PEER_ADDRESS")
        if not 0 < self.port < 65536:
            raise InvalidInput("peer port must be 1..65535", code="BAD_PEER_ADDRESS")

    @classmethod
    def for_key(cls, public_key: bytes, host: str, port: int) -> PeerAddress:
        return cls(identity_id_for(public_key), public_key, host, port)


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Capped exponential backoff with "equal jitter": uniform in [d/2, d], d = min(cap, base·2^n)."""
    ceiling = min(cap, base * (2.0 ** min(attempt, 32)))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


@dataclass(eq=False)
class _Link:
    conn: SecureConnection
    peer: _Peer
    started: float
    queue: deque[bytes] = field(default_factory=deque)
    queued_bytes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    retiring: bool = False
    reading: bool = True
    closed: bool = False
    reader: asyncio.Task[None] | None = None
    writer: asyncio.Task[None] | None = None
    drain_timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Peer:
    id: str
    public_key: bytes
    address: PeerAddress | None  # None: inbound only (allowed by a custom policy, not dialed)
    current: _Link | None = None
    retiring: set[_Link] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    dialer: asyncio.Task[None] | None = None
    failures: int = 0  # consecutive failed dials or short-lived links, for backoff

    def notify(self) -> None:
        """Wake everything waiting for this peer's links to change."""
        self.changed.set()
        self.changed = asyncio.Event()

    @property
    def draining_readers(self) -> bool:
        return any(link.reading for link in self.retiring)


class PeerManager:
    """Listens, dials every peer, and keeps exactly one connection per peer.

    ``on_message(peer_id, message)`` is called for every message, in order per peer,
    one at a time per peer (awaited if it returns an awaitable; a slow handler slows
    only that peer's reader, and TCP pushes back on the sender). An exception from it
    is logged (type only) and the connection continues.

    ``allowed`` decides which keys may connect inbound; by default, the keys in
    ``peers``. A dial accepts only the key in the peer's address.
    """

    def __init__(
        self,
        key: PrivateKey,
        *,
        chain_id: str,
        listen_host: str,
        listen_port: int,
        peers: list[PeerAddress],
        on_message: OnMessage,
        allowed: Callable[[bytes], bool] | None = None,
        rng: random.Random | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        queue_limit: int = 1024,
        queue_bytes: int = 64 * 1024 * 1024,
        backoff_base: float = 0.1,
        backoff_cap: float = 10.0,
        dial_timeout: float = 5.0,
        handshake_timeout: float = 5.0,
        drain_timeout: float = 2.0,
    ) -> None:
        if queue_limit < 1 or queue_bytes < 1:
            raise InvalidInput("queue bounds must be positive", code="BAD_CONFIG")
        self.id = key.id
        self.chain_id = chain_id
        self.listen_host = listen_host
        self.listen_port = listen_port
        self._key = key
        self._on_message = on_message
        self._policy = allowed
        self._rng = rng or random.Random()
        self._max_frame_size = max_frame_size
        self._queue_limit = queue_limit
        self._queue_bytes = queue_bytes
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._dial_timeout = dial_timeout
        self._handshake_timeout = handshake_timeout
        self._drain_timeout = drain_timeout
        self._peers: dict[str, _Peer] = {}
        self._server: asyncio.Server | None = None
        self._listener: _Listener | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._stopping = False
        # Counters (monotonic, for metrics).
        self.queue_overflows = 0
        self.messages_dropped = 0
        self.connects = 0
        self.disconnects = 0
        self.set_peers(peers)

    # ---- public API ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually listened on (useful with ``listen_port=0``)."""
        return self.listen_port

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("PeerManager.start() called twice")
        self._started = True
        self._server, self._listener = await serve(
            self.listen_host,
            self.listen_port,
            self._key,
            chain_id=self.chain_id,
            allowed=self._allow_inbound,
            on_connection=self._on_inbound,
            handshake_timeout=self._handshake_timeout,
            max_frame_size=self._max_frame_size,
        )
        sockets = self._server.sockets
        if sockets:
            self.listen_port = int(sockets[0].getsockname()[1])
        log.info("p2p.listening", node=self.id, host=self.listen_host, port=self.listen_port)
        for peer in self._peers.values():
            self._ensure_dialer(peer)

    async def stop(self) -> None:
        """Close the listener and every connection; return when no task is left."""
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._listener is not None:
            self._listener.cancel()
        for peer in list(self._peers.values()):
            if peer.dialer is not None:
                peer.dialer.cancel()
            for link in self._links(peer):
                self._abort(link, "stopped")
                if link.reader is not None:
                    link.reader.cancel()
        pending = set(self._tasks)
        if self._listener is not None:
            pending |= self._listener.tasks
        while pending:
            await asyncio.gather(*pending, return_exceptions=True)
            pending = {t for t in self._tasks if not t.done()}
        if self._server is not None:
            await self._server.wait_closed()
        log.info("p2p.stopped", node=self.id)

    def connected(self) -> list[str]:
        return sorted(pid for pid, peer in self._peers.items() if peer.current is not None)

    def connection(self, peer_id: str) -> SecureConnection | None:
        """The current connection to ``peer_id``, if any (for its key, direction, address)."""
        peer = self._peers.get(peer_id)
        return peer.current.conn if peer is not None and peer.current is not None else None

    async def send(self, peer_id: str, message: bytes) -> bool:
        """Queue ``message`` for ``peer_id``. False if not connected or its queue overflowed."""
        self._check_size(message)
        peer = self._peers.get(peer_id)
        if peer is None or peer.current is None:
            return False
        return self._enqueue(peer.current, message)

    async def broadcast(self, message: bytes) -> int:
        """Queue ``message`` for every connected peer; return how many took it."""
        self._check_size(message)
        links = [p.current for p in self._peers.values() if p.current is not None]
        return sum(self._enqueue(link, message) for link in links)

    def set_peers(self, peers: list[PeerAddress]) -> None:
        """Replace the peer list: dial new peers, drop removed ones, update addresses."""
        wanted = {p.id: p for p in peers if p.public_key != self._key.public_key.raw}
        for pid, peer in list(self._peers.items()):
            if pid not in wanted and peer.address is not None:
                self._remove(peer)
        for pid, addr in wanted.items():
            known = self._peers.get(pid)
            if known is None:
                known = self._peers[pid] = _Peer(pid, addr.public_key, addr)
            else:
                known.address = addr
            if self._started:
                self._ensure_dialer(known)

    def stats(self) -> dict[str, int]:
        links = [link for p in self._peers.values() for link in self._links(p)]
        return {
            "peers_connected": len(self.connected()),
            "links_open": len(links),
            "messages_queued": sum(len(link.queue) for link in links),
            "queue_overflows": self.queue_overflows,
            "messages_dropped": self.messages_dropped,
            "connects": self.connects,
            "disconnects": self.disconnects,
        }

    # ---- policy --------------------------------------------------------------------------

    def _allow_inbound(self, public_key: bytes) -> bool:
        if self._stopping:
            return False
        if self._policy is not None:
            return self._policy(public_key)
        peer = self._peers.get(identity_id_for(public_key))
        return peer is not None and peer.address is not None

    def _check_size(self, message: bytes) -> None:
        if len(message) > self._max_frame_size:
            raise P2PError(
                "message exceeds the frame size limit",
                code=FRAME_TOO_LARGE,
                size=len(message),
                limit=self._max_frame_size,
            )

    # ---- dialing -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _ensure_dialer(self, peer: _Peer) -> None:
        if self._stopping or peer.address is None:
            return
        if peer.dialer is None or peer.dialer.done():
            peer.dialer = self._spawn(self._dial_loop(peer), f"p2p-dial-{peer.id}")

    def _backoff(self, peer: _Peer) -> float:
        delay = backoff_delay(
            peer.failures, base=self._backoff_base, cap=self._backoff_cap, rng=self._rng
        )
        peer.failures += 1
        return delay

    async def _dial_loop(self, peer: _Peer) -> None:
        back_off = False  # the first dial is immediate
        while not self._stopping and self._peers.get(peer.id) is peer:
            if peer.current is not None:
                await peer.changed.wait()
                back_off = True
                continue
            if back_off:  # a link just ended, or a dial failed: wait before (re)dialing
                await asyncio.sleep(self._backoff(peer))
                if peer.current is not None:
                    continue
            back_off = True
            addr = peer.address
            if addr is None or self._stopping or self._peers.get(peer.id) is not peer:
                return
            try:
                conn = await open_connection(
                    addr.host,
                    addr.port,
                    self._key,
                    chain_id=self.chain_id,
                    allowed=functools.partial(self._dial_allows, addr.public_key),
                    timeout=self._dial_timeout,
                    max_frame_size=self._max_frame_size,
                )
            except P2PError as exc:
                log.info("p2p.dial_failed", node=self.id, peer=peer.id, code=exc.code)
                continue
            if self._stopping or self._peers.get(peer.id) is not peer:
                conn.abort()
                return
            self._attach(peer, conn)

    def _dial_allows(self, expected: bytes, public_key: bytes) -> bool:
        """A dial accepts only the key in the address (and only if the policy allows it)."""
        return public_key == expected and (self._policy is None or self._policy(public_key))

    async def _on_inbound(self, conn: SecureConnection) -> None:
        if not self._allow_inbound(conn.peer_public_key):  # stopping, or removed meanwhile
            conn.abort()
            return
        peer = self._peers.get(conn.peer_id)
        if peer is None:  # allowed by a custom policy, not in the peer list
            peer = self._peers[conn.peer_id] = _Peer(conn.peer_id, conn.peer_public_key, None)
        self._attach(peer, conn)

    # ---- links ---------------------------------------------------------------------------

    @staticmethod
    def _links(peer: _Peer) -> list[_Link]:
        links = list(peer.retiring)
        if peer.current is not None:
            links.append(peer.current)
        return links

    def _dialer_id(self, link: _Link) -> str:
        return self.id if link.conn.outbound else link.peer.id

    def _wins(self, new: _Link, old: _Link) -> bool:
        """Does ``new`` replace ``old``? Both sides of the pair reach the same answer."""
        if new.conn.outbound == old.conn.outbound:
            return True  # same dialer: it gave up the old one
        preferred = min(self.id, new.peer.id)
        return self._dialer_id(new) == preferred

    def _attach(self, peer: _Peer, conn: SecureConnection) -> None:
        """Adopt an authenticated connection. Must not yield: ordering depends on it."""
        loop = asyncio.get_running_loop()
        link = _Link(conn=conn, peer=peer, started=loop.time())
        link.reader = self._spawn(self._read_loop(link), f"p2p-read-{peer.id}")
        link.writer = self._spawn(self._write_loop(link), f"p2p-write-{peer.id}")
        old = peer.current
        direction = "out" if conn.outbound else "in"
        if old is None:
            peer.current = link
            self.connects += 1
            log.info(
                "p2p.connected", node=self.id, peer=peer.id, direction=direction, remote=conn.remote
            )
        elif self._wins(link, old):
            peer.current = link
            if old.conn.outbound == conn.outbound:
                self._abort(old, "replaced")
            else:
                self._retire(old, "replaced")
            log.info("p2p.connection_replaced", node=self.id, peer=peer.id, kept=direction)
        else:
            self._retire(link, "duplicate")
            log.info("p2p.duplicate_connection", node=self.id, peer=peer.id, dropped=direction)
        peer.notify()

    def _retire(self, link: _Link, reason: str) -> None:
        """Stop using ``link`` for new messages; flush, half-close, drain, then close."""
        if link.closed or link.retiring:
            return
        link.retiring = True
        self._lose_current(link, reason)
        link.peer.retiring.add(link)
        link.wake.set()
        link.drain_timer = asyncio.get_running_loop().call_later(
            self._drain_timeout, self._abort, link, "drain_timeout"
        )
        link.peer.notify()

    def _abort(self, link: _Link, reason: str) -> None:
        """Close ``link`` now and drop what it had queued.

        The writer is cancelled; the reader is not (it may be inside ``on_message``): it
        sees the closed connection and returns.
        """
        if link.closed:
            return
        link.closed = True
        link.reading = False
        link.conn.abort()
        if link.drain_timer is not None:
            link.drain_timer.cancel()
        if link.queue:
            self.messages_dropped += len(link.queue)
            link.queue.clear()
            link.queued_bytes = 0
        if link.writer is not None and link.writer is not asyncio.current_task():
            link.writer.cancel()
        self._lose_current(link, reason)
        self._forget(link)

    def _lose_current(self, link: _Link, reason: str) -> None:
        peer = link.peer
        if peer.current is not link:
            return
        peer.current = None
        self.disconnects += 1
        log.info("p2p.disconnected", node=self.id, peer=peer.id, reason=reason)
        if asyncio.get_running_loop().time() - link.started >= self._backoff_cap:
            peer.failures = 0  # the link was healthy: reconnect quickly

    def _forget(self, link: _Link) -> None:
        """``link`` is closed: remove it, and an inbound-only peer left with no link."""
        peer = link.peer
        peer.retiring.discard(link)
        if (
            peer.address is None
            and peer.current is None
            and not peer.retiring
            and self._peers.get(peer.id) is peer
        ):
            del self._peers[peer.id]
        peer.notify()

    def _enqueue(self, link: _Link, message: bytes) -> bool:
        if (
            len(link.queue) >= self._queue_limit
            or link.queued_bytes + len(message) > self._queue_bytes
        ):
            self.queue_overflows += 1
            self.messages_dropped += 1
            log.warning(
                "p2p.queue_overflow",
                node=self.id,
                peer=link.peer.id,
                queued=len(link.queue),
                queued_bytes=link.queued_bytes,
            )
            self._abort(link, "queue_overflow")
            return False
        link.queue.append(message)
        link.queued_bytes += len(message)
        link.wake.set()
        return True

    async def _write_loop(self, link: _Link) -> None:
        conn = link.conn
        try:
            while True:
                if link.queue:
                    batch = list(link.queue)  # sizes were checked when queued
                    link.queue.clear()
                    link.queued_bytes = 0
                    await conn.send_many(batch)
                    continue
                if link.retiring:
                    await conn.close_write()
                    return
                link.wake.clear()
                await link.wake.wait()
        except (P2PError, OSError) as exc:
            self._abort(link, exc.code if isinstance(exc, P2PError) else "send_failed")

    async def _read_loop(self, link: _Link) -> None:
        conn, peer = link.conn, link.peer
        try:
            while True:
                message = await conn.recv()
                # Hold back the current link while a retired one still delivers (ordering).
                while peer.current is link and peer.draining_readers:
                    await peer.changed.wait()
                if link.closed:
                    return
                await self._deliver(peer.id, message)
        except P2PError as exc:
            if link.closed:
                return
            if exc.code != CONNECTION_CLOSED or conn.closed:
                self._abort(link, exc.code)
                return
        # The peer ended its stream cleanly: finish sending what was queued, then close.
        link.reading = False
        self._retire(link, "peer_closed")
        peer.notify()
        if link.writer is not None:
            await asyncio.wait([link.writer])
        if link.closed:
            return
        link.closed = True
        if link.drain_timer is not None:
            link.drain_timer.cancel()
        await conn.close()
        self._forget(link)

    async def _deliver(self, peer_id: str, message: bytes) -> None:
        try:
            result = self._on_message(peer_id, message)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            log.warning(
                "p2p.handler_error",
                node=self.id,
                peer=peer_id,
                error=type(exc).__name__,
                code=exc.code if isinstance(exc, MedLedgerError) else None,
            )

    def _remove(self, peer: _Peer) -> None:
        del self._peers[peer.id]
        if peer.dialer is not None:
            peer.dialer.cancel()
        for link in self._links(peer):
            self._abort(link, "removed")
        peer.notify()
        log.info("p2p.peer_removed", node=self.id, peer=peer.id)

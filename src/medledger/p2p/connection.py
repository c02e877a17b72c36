"""Authenticated, encrypted connections over asyncio TCP streams.

A thin driver around :class:`medledger.p2p.handshake.Session`: it moves bytes
between the socket and the sans-I/O machine and enforces timeouts. Every failure
surfaces as :class:`P2PError` with a stable code; ``open_connection`` never raises
``OSError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Awaitable, Callable

from medledger.crypto.keys import PrivateKey, identity_id_for
from medledger.log import get_logger
from medledger.p2p.errors import (
    CONNECT_FAILED,
    CONNECTION_CLOSED,
    FRAME_TOO_LARGE,
    HANDSHAKE_FAILED,
    P2PError,
)
from medledger.p2p.handshake import DEFAULT_MAX_FRAME_SIZE, Role, Session

__all__ = ["P2PError", "SecureConnection", "open_connection", "start_server"]

log = get_logger("medledger.p2p")

READ_SIZE = 256 * 1024
CLOSE_TIMEOUT = 1.0
DEFAULT_HANDSHAKE_TIMEOUT = 5.0
DEFAULT_MAX_PENDING_HANDSHAKES = 64
# A silent peer (host gone, packets dropped) is detected by TCP itself: keepalive probes
# after 15 s idle, every 5 s, 3 misses; and unacknowledged data for 30 s ends the link.
KEEPALIVE_IDLE_S = 15
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 30_000


def _tune_socket(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), KEEPALIVE_IDLE_S),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL_S),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_COUNT),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), USER_TIMEOUT_MS),
    ]
    for level, name, value in options:
        if name is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, name, value)


class SecureConnection:
    """An established connection to an authenticated peer.

    ``send`` may be called from several tasks (frames are written whole, in call
    order); ``recv`` from one task at a time. Once any error has been raised the
    connection is closed and every later call raises ``CONNECTION_CLOSED``.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Session,
        received: list[bytes],
        *,
        outbound: bool,
    ) -> None:
        assert session.peer_public_key is not None
        self.peer_public_key: bytes = session.peer_public_key
        self.peer_id: str = identity_id_for(session.peer_public_key)
        self.outbound = outbound  # True if we dialed (we were the initiator)
        self.remote: str = _address(writer.get_extra_info("peername"))
        self.local: str = _address(writer.get_extra_info("sockname"))
        self._reader = reader
        self._writer = writer
        self._session = session
        self._inbox: deque[bytes] = deque(received)
        self._closed = False
        self._eof = False

    @property
    def closed(self) -> bool:
        return self._closed or self._writer.is_closing()

    async def send(self, message: bytes) -> None:
        """Encrypt and write one message; wait while the socket buffer is full."""
        if self.closed:
            raise P2PError("connection is closed", code=CONNECTION_CLOSED)
        frame = self._session.seal(message)  # FRAME_TOO_LARGE leaves the connection usable
        self._writer.write(frame)
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            self.abort()
            raise P2PError("connection lost while sending", code=CONNECTION_CLOSED)

    async def send_many(self, messages: list[bytes]) -> None:
        """Like ``send`` for each message, in order, with one wait for the socket buffer."""
        if self.closed:
            raise P2PError("connection is closed", code=CONNECTION_CLOSED)
        limit = self._session.max_frame_size
        if any(len(m) > limit for m in messages):  # before sealing: no nonce may be skipped
            raise P2PError("message exceeds the frame size limit", code=FRAME_TOO_LARGE)
        self._writer.writelines([self._session.seal(m) for m in messages])
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            self.abort()
            raise P2PError("connection lost while sending", code=CONNECTION_CLOSED)

    async def recv(self) -> bytes:
        """The next message; ``CONNECTION_CLOSED`` at the end of the stream."""
        while not self._inbox:
            if self._closed or self._eof:
                raise P2PError("connection is closed", code=CONNECTION_CLOSED)
            try:
                data = await self._reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                self.abort()
                raise P2PError("connection lost while receiving", code=CONNECTION_CLOSED)
            try:
                if not data:
                    self._eof = True
                    self._session.receive_eof()  # FRAME_INVALID if the stream was truncated
                    raise P2PError("the peer closed the connection", code=CONNECTION_CLOSED)
                self._inbox.extend(self._session.receive_data(data))
            except P2PError as exc:
                if exc.code != CONNECTION_CLOSED:
                    self.abort()
                raise
        return self._inbox.popleft()

    async def close_write(self) -> None:
        """Half-close: send what is buffered, then end our stream; the peer may still send."""
        if self.closed or not self._writer.can_write_eof():
            return
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self._writer.write_eof()
            await self._writer.drain()

    async def close(self) -> None:
        """Flush and close; abort if the peer does not take the bytes within a second."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._writer.wait_closed()
        except (TimeoutError, ConnectionError, OSError):
            self._writer.transport.abort()

    def abort(self) -> None:
        """Close at once, dropping anything not yet written."""
        self._closed = True
        self._writer.transport.abort()

    def __repr__(self) -> str:
        direction = "out" if self.outbound else "in"
        return f"<SecureConnection {self.peer_id} {direction} {self.remote}>"


def _address(info: object) -> str:
    return f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)


async def _handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: Session
) -> SecureConnection:
    """Run the handshake to completion. Returns without yielding after the last write."""
    received: list[bytes] = []
    _tune_socket(writer)
    writer.write(session.data_to_send())
    while not session.established:
        try:
            data = await reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            raise P2PError("connection lost during the handshake", code=HANDSHAKE_FAILED)
        if not data:
            session.receive_eof()  # raises HANDSHAKE_FAILED before the handshake is done
            raise P2PError("the peer closed the connection", code=HANDSHAKE_FAILED)
        received.extend(session.receive_data(data))
        out = session.data_to_send()
        if out:
            writer.write(out)
    return SecureConnection(
        reader, writer, session, received, outbound=session.role is Role.INITIATOR
    )


async def open_connection(
    host: str,
    port: int,
    key: PrivateKey,
    *,
    chain_id: str,
    allowed: Callable[[bytes], bool],
    timeout: float = 5.0,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> SecureConnection:
    """Dial ``host:port`` and authenticate; ``timeout`` covers connect and handshake.

    Raises ``P2PError``: ``CONNECT_FAILED``, ``HANDSHAKE_FAILED`` (including a peer that
    refused our key: it just closes), ``WRONG_CHAIN`` or ``PEER_NOT_ALLOWED``.
    """
    session = Session(
        key, role=Role.INITIATOR, chain_id=chain_id, allowed=allowed, max_frame_size=max_frame_size
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            reader, writer = await asyncio.open_connection(host, port, limit=READ_SIZE)
    except (TimeoutError, OSError) as exc:
        raise P2PError(
            f"cannot connect to {host}:{port}", code=CONNECT_FAILED, error=type(exc).__name__
        )
    try:
        async with asyncio.timeout_at(deadline):
            return await _handshake(reader, writer, session)
    except TimeoutError:
        writer.transport.abort()
        raise P2PError("the handshake timed out", code=HANDSHAKE_FAILED)
    except BaseException:
        writer.transport.abort()
        raise


class _Listener:
    """Accepts connections for one server; tracks in-flight handshakes so they can be cancelled."""

    def __init__(
        self,
        key: PrivateKey,
        *,
        chain_id: str,
        allowed: Callable[[bytes], bool],
        on_connection: Callable[[SecureConnection], Awaitable[None]],
        handshake_timeout: float,
        max_frame_size: int,
        max_pending: int,
    ) -> None:
        self._key = key
        self._chain_id = chain_id
        self._allowed = allowed
        self._on_connection = on_connection
        self._handshake_timeout = handshake_timeout
        self._max_frame_size = max_frame_size
        self._max_pending = max_pending
        self._pending = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            await self._handle(reader, writer)
        finally:
            if task is not None:
                self.tasks.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote = _address(writer.get_extra_info("peername"))
        if self._pending >= self._max_pending:
            log.warning("p2p.handshake_refused", remote=remote, reason="too many handshakes")
            writer.transport.abort()
            return
        session = Session(
            self._key,
            role=Role.RESPONDER,
            chain_id=self._chain_id,
            allowed=self._allowed,
            max_frame_size=self._max_frame_size,
        )
        self._pending += 1
        try:
            async with asyncio.timeout(self._handshake_timeout):
                conn = await _handshake(reader, writer, session)
        except TimeoutError:
            writer.transport.abort()
            log.info("p2p.handshake_failed", remote=remote, code=HANDSHAKE_FAILED, reason="timeout")
            return
        except P2PError as exc:
            writer.transport.abort()
            log.info("p2p.handshake_failed", remote=remote, code=exc.code)
            return
        except BaseException:
            writer.transport.abort()
            raise
        finally:
            self._pending -= 1
        try:
            await self._on_connection(conn)
        except Exception as exc:
            conn.abort()
            log.warning("p2p.on_connection_failed", peer=conn.peer_id, error=type(exc).__name__)
        except BaseException:
            conn.abort()
            raise

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()


async def serve(
    host: str,
    port: int,
    key: PrivateKey,
    *,
    chain_id: str,
    allowed: Callable[[bytes], bool],
    on_connection: Callable[[SecureConnection], Awaitable[None]],
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    max_pending_handshakes: int = DEFAULT_MAX_PENDING_HANDSHAKES,
) -> tuple[asyncio.Server, _Listener]:
    """Like :func:`start_server`, also returning the listener whose tasks ``cancel()`` stops."""
    listener = _Listener(
        key,
        chain_id=chain_id,
        allowed=allowed,
        on_connection=on_connection,
        handshake_timeout=handshake_timeout,
        max_frame_size=max_frame_size,
        max_pending=max_pending_handshakes,
    )
    server = await asyncio.start_server(listener.handle, host, port, limit=READ_SIZE)
    return server, listener


async def start_server(
    host: str,
    port: int,
    key: PrivateKey,
    *,
    chain_id: str,
    allowed: Callable[[bytes], bool],
    on_connection: Callable[[SecureConnection], Awaitable[None]],
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    max_pending_handshakes: int = DEFAULT_MAX_PENDING_HANDSHAKES,
) -> asyncio.Server:
    """Listen; authenticate each inbound connection, then await ``on_connection(conn)``.

    The connection stays open after ``on_connection`` returns: the callee owns it and
    must close it. If ``on_connection`` raises, the connection is aborted. Failed
    handshakes are logged (code and remote address) and dropped. After
    ``server.close()``, handshakes already under way end within ``handshake_timeout``.
    """
    server, _ = await serve(
        host,
        port,
        key,
        chain_id=chain_id,
        allowed=allowed,
        on_connection=on_connection,
        handshake_timeout=handshake_timeout,
        max_frame_size=max_frame_size,
        max_pending_handshakes=max_pending_handshakes,
    )
    return server

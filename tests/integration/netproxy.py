"""TCP proxies the tests control, to cut and heal the links between real node processes.

A :class:`NetProxy` runs an asyncio loop in a daemon thread. Each :meth:`NetProxy.add`
opens one proxy (``src`` → ``dst``) on a free port of 127.0.0.1 that forwards to
``dst``'s real port; a node configured to dial the proxy instead of its peer sends all
its traffic for that peer through it. :meth:`NetProxy.partition` cuts every proxy whose
ends are in different groups: its open connections are aborted and new ones are
accepted and closed at once (the dialer sees the link fail); :meth:`NetProxy.heal`
lets them through again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

HOST = "127.0.0.1"
READ_SIZE = 64 * 1024
CALL_TIMEOUT_S = 10.0

T = TypeVar("T")


@dataclass
class Link:
    """One directed proxy: ``src`` dials ``port``, which forwards to ``target_port``."""

    src: str
    dst: str
    target_port: int
    port: int = 0
    blocked: bool = False
    accepted: int = 0  # connections forwarded
    refused: int = 0  # connections closed at once while blocked
    cut: int = 0  # open connections aborted by a partition
    server: asyncio.Server | None = None
    conns: set[asyncio.WriteTransport] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class NetProxy:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.links: list[Link] = []
        self._thread = threading.Thread(target=self._run, name="netproxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT_S)

    # ---- control (from the test's thread) -------------------------------------------------

    def add(self, src: str, dst: str, target_port: int) -> Link:
        """Open a proxy for ``src``'s connections to ``dst``; its ``port`` is listening."""
        link = Link(src=src, dst=dst, target_port=target_port)
        self._call(self._listen(link))
        self.links.append(link)
        return link

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between two different groups; heal those within a group."""
        group_of = {name: i for i, g in enumerate(groups) for name in g}
        self._call(self._set_blocked(lambda a, b: group_of.get(a) != group_of.get(b)))

    def heal(self) -> None:
        self._call(self._set_blocked(lambda a, b: False))

    def stats(self) -> dict[tuple[str, str], dict[str, int]]:
        return {
            (lk.src, lk.dst): {"accepted": lk.accepted, "refused": lk.refused, "cut": lk.cut}
            for lk in self.links
        }

    def close(self) -> None:
        """Close every proxy and connection, then stop the loop and its thread."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._close_all())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(CALL_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()

    # ---- the proxy (in the loop's thread) ----------------------------------------------------

    async def _listen(self, link: Link) -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(link, reader, writer)

        link.server = await asyncio.start_server(on_client, HOST, 0)
        link.port = int(link.server.sockets[0].getsockname()[1])

    async def _serve(
        self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        client = writer.transport
        if link.blocked:
            link.refused += 1
            client.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, link.target_port)
        except OSError:
            client.abort()  # the target is down: the dialer sees a failed connection
            return
        upstream = up_writer.transport
        if link.blocked:  # cut while we were connecting
            link.refused += 1
            client.abort()
            upstream.abort()
            return
        link.accepted += 1
        link.conns.update((client, upstream))
        pumps = [
            asyncio.create_task(_pump(reader, up_writer, (client, upstream))),
            asyncio.create_task(_pump(up_reader, writer, (client, upstream))),
        ]
        link.tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            link.tasks.difference_update(pumps)
            link.conns.discard(client)
            link.conns.discard(upstream)
            client.abort()
            upstream.abort()

    async def _set_blocked(self, blocked: Any) -> None:
        for link in self.links:
            link.blocked = bool(blocked(link.src, link.dst))
            if link.blocked and link.conns:
                link.cut += len(link.conns) // 2  # two transports per connection
                for transport in list(link.conns):
                    transport.abort()
                link.conns.clear()

    async def _close_all(self) -> None:
        for link in self.links:
            link.blocked = True
            if link.server is not None:
                link.server.close()
            for transport in list(link.conns):
                transport.abort()
            for task in list(link.tasks):
                task.cancel()
        for link in self.links:
            if link.server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(link.server.wait_closed(), 2.0)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    both: tuple[asyncio.WriteTransport, asyncio.WriteTransport],
) -> None:
    """Copy ``reader`` to ``writer``; pass an EOF on as a half-close, an error as an abort."""
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    except (ConnectionError, OSError, RuntimeError):
        for transport in both:
            transport.abort()

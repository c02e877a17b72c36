"""p2p over real sockets on 127.0.0.1 (``medledger.p2p``): connections, meshes, faults.

Every listener binds port 0; every test runs in its own event loop, stops what it
started and checks that no task is left behind.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from medledger.crypto.keys import PrivateKey
from medledger.p2p import (
    P2PError,
    PeerAddress,
    PeerManager,
    SecureConnection,
    backoff_delay,
    open_connection,
    start_server,
)

CHAIN = "medledger-p2p-test"
HOST = "127.0.0.1"
KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(6)]


def run(coro: Coroutine[Any, Any, None], timeout: float = 20.0) -> None:
    """Run ``coro`` in a fresh loop, then require that it left no task running."""

    async def main() -> None:
        async with asyncio.timeout(timeout):
            await coro
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert leftover == [], f"tasks left running: {leftover}"

    asyncio.run(main())


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.005)


class Node:
    """A PeerManager and the messages it received, by sender."""

    def __init__(
        self,
        key: PrivateKey,
        *,
        seed: int,
        peers: list[PeerAddress] | None = None,
        handler: Callable[[str, bytes], Awaitable[None] | None] | None = None,
        **options: Any,
    ) -> None:
        self.key = key
        self.got: dict[str, list[bytes]] = {}
        options.setdefault("backoff_base", 0.02)
        options.setdefault("backoff_cap", 0.2)
        self.manager = PeerManager(
            key,
            chain_id=options.pop("chain_id", CHAIN),
            listen_host=HOST,
            listen_port=0,
            peers=peers or [],
            on_message=handler or self.on_message,
            rng=random.Random(seed),
            **options,
        )

    def on_message(self, peer_id: str, message: bytes) -> None:
        self.got.setdefault(peer_id, []).append(message)

    @property
    def id(self) -> str:
        return self.key.id

    @property
    def address(self) -> PeerAddress:
        return PeerAddress.for_key(self.key.public_key.raw, HOST, self.manager.port)


async def start_mesh(n: int, **options: Any) -> list[Node]:
    """n nodes listening on port 0, then told about each other at the same moment."""
    nodes = [Node(KEYS[i], seed=i, **options) for i in range(n)]
    for node in nodes:
        await node.manager.start()
    addresses = [node.address for node in nodes]
    for node in nodes:
        node.manager.set_peers(addresses)  # all dial all: every pair races
    return nodes


def full_mesh(nodes: list[Node]) -> bool:
    return all(len(node.manager.connected()) == len(nodes) - 1 for node in nodes)


def settled(nodes: list[Node]) -> bool:
    """Exactly one link per pair, the same TCP connection seen from both ends."""
    by_id = {node.id: node for node in nodes}
    for node in nodes:
        stats = node.manager.stats()
        if stats["links_open"] != len(nodes) - 1 or stats["peers_connected"] != len(nodes) - 1:
            return False
        for peer_id in node.manager.connected():
            mine = node.manager.connection(peer_id)
            theirs = by_id[peer_id].manager.connection(node.id)
            if mine is None or theirs is None or mine.local != theirs.remote:
                return False
    return True


def dialed_by_smaller_id(nodes: list[Node]) -> bool:
    return all(
        (conn := node.manager.connection(other.id)) is not None
        and conn.outbound == (node.id < other.id)
        for node in nodes
        for other in nodes
        if other is not node
    )


async def stop_all(nodes: list[Node]) -> None:
    await asyncio.gather(*(node.manager.stop() for node in nodes))


def numbered(i: int) -> bytes:
    return i.to_bytes(4, "big") + b"m" * (i % 97)


def numbers(messages: list[bytes]) -> list[int]:
    return [int.from_bytes(m[:4], "big") for m in messages]


# ---- SecureConnection ---------------------------------------------------------------------


def test_connection_round_trip_and_clean_close() -> None:
    server_key, client_key = KEYS[0], KEYS[1]

    async def scenario() -> None:
        server_side: asyncio.Queue[SecureConnection] = asyncio.Queue()

        async def on_connection(conn: SecureConnection) -> None:
            await server_side.put(conn)

        server = await start_server(
            HOST,
            0,
            server_key,
            chain_id=CHAIN,
            allowed=lambda k: k == client_key.public_key.raw,
            on_connection=on_connection,
        )
        port = server.sockets[0].getsockname()[1]
        client = await open_connection(
            HOST, port, client_key, chain_id=CHAIN, allowed=lambda k: k == server_key.public_key.raw
        )
        accepted = await server_side.get()
        assert client.peer_public_key == server_key.public_key.raw
        assert client.peer_id == server_key.id and accepted.peer_id == client_key.id
        assert client.outbound and not accepted.outbound
        for conn in (client, accepted):  # a silent peer is detected by TCP keepalive
            sock = conn._writer.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        big = bytes(range(256)) * 8192  # 2 MiB in one frame
        for message in (b"hello", b"", big):
            await client.send(message)
        assert [await accepted.recv() for _ in range(3)] == [b"hello", b"", big]
        with pytest.raises(P2PError) as err:  # nothing of a refused batch is sent
            await client.send_many([b"first", b"x" * (16 * 1024 * 1024 + 1)])
        assert err.value.code == "FRAME_TOO_LARGE"
        await client.send_many([b"batch 1", b"batch 2"])
        assert [await accepted.recv() for _ in range(2)] == [b"batch 1", b"batch 2"]
        await accepted.send(b"reply")
        assert await client.recv() == b"reply"
        await client.close()
        with pytest.raises(P2PError) as err:
            await accepted.recv()
        assert err.value.code == "CONNECTION_CLOSED"
        with pytest.raises(P2PError) as err:
            await client.send(b"after close")
        assert err.value.code == "CONNECTION_CLOSED"
        await accepted.close()
        server.close()
        await server.wait_closed()

    run(scenario())


def test_unknown_key_is_refused() -> None:
    member, stranger = KEYS[0], KEYS[5]

    async def scenario() -> None:
        accepted: list[SecureConnection] = []

        async def on_connection(conn: SecureConnection) -> None:
            accepted.append(conn)

        server = await start_server(
            HOST,
            0,
            member,
            chain_id=CHAIN,
            allowed=lambda k: k == KEYS[1].public_key.raw,
            on_connection=on_connection,
        )
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(P2PError) as err:
            await open_connection(HOST, port, stranger, chain_id=CHAIN, allowed=lambda k: True)
        assert err.value.code == "HANDSHAKE_FAILED"  # the member hangs up without a word
        assert accepted == []
        server.close()
        await server.wait_closed()

    run(scenario())


def test_impostor_at_a_peer_address_is_refused() -> None:
    """Dialing B's address, we get C: C proves its own key, which is not the one we want."""
    expected, impostor = KEYS[1], KEYS[2]

    async def scenario() -> None:
        async def ignore(conn: SecureConnection) -> None:
            await conn.close()

        server = await start_server(
            HOST, 0, impostor, chain_id=CHAIN, allowed=lambda k: True, on_connection=ignore
        )
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(P2PError) as err:
            await open_connection(
                HOST, port, KEYS[0], chain_id=CHAIN, allowed=lambda k: k == expected.public_key.raw
            )
        assert err.value.code == "PEER_NOT_ALLOWED"
        server.close()
        await server.wait_closed()

    run(scenario())


def test_wrong_chain_and_closed_port() -> None:
    async def scenario() -> None:
        async def ignore(conn: SecureConnection) -> None:
            await conn.close()

        server = await start_server(
            HOST, 0, KEYS[0], chain_id="other-chain", allowed=lambda k: True, on_connection=ignore
        )
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(P2PError) as err:
            await open_connection(HOST, port, KEYS[1], chain_id=CHAIN, allowed=lambda k: True)
        assert err.value.code == "WRONG_CHAIN"
        server.close()
        await server.wait_closed()
        with pytest.raises(P2PError) as err:
            await open_connection(HOST, port, KEYS[1], chain_id=CHAIN, allowed=lambda k: True)
        assert err.value.code == "CONNECT_FAILED"

    run(scenario())


def test_silent_peer_times_out_the_handshake() -> None:
    async def scenario() -> None:
        done = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # never answers, waits for the client to give up
            writer.close()
            done.set()

        server = await asyncio.start_server(silent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        started = time.monotonic()
        with pytest.raises(P2PError) as err:
            await open_connection(
                HOST, port, KEYS[0], chain_id=CHAIN, allowed=lambda k: True, timeout=0.2
            )
        assert err.value.code == "HANDSHAKE_FAILED"
        assert time.monotonic() - started < 2
        await done.wait()
        server.close()
        await server.wait_closed()

    run(scenario())


class FlipProxy:
    """A TCP proxy owned by the test: flips one bit of the client's stream when armed."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.armed = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, HOST, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        self.writers += [writer, up_writer]
        pumps = [
            asyncio.ensure_future(self.pump(reader, up_writer, tamper=True)),
            asyncio.ensure_future(self.pump(up_reader, writer, tamper=False)),
        ]
        self.tasks.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)

    async def pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, tamper: bool
    ) -> None:
        while data := await reader.read(65536):
            if tamper and self.armed:
                self.armed = False
                i = len(data) // 2  # inside the ciphertext of the first frame
                data = data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :]
            writer.write(data)
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


def test_tampered_frame_on_the_wire_closes_the_connection() -> None:
    async def scenario() -> None:
        accepted: asyncio.Queue[SecureConnection] = asyncio.Queue()

        async def on_connection(conn: SecureConnection) -> None:
            await accepted.put(conn)

        server = await start_server(
            HOST, 0, KEYS[0], chain_id=CHAIN, allowed=lambda k: True, on_connection=on_connection
        )
        proxy = FlipProxy(server.sockets[0].getsockname()[1])
        port = await proxy.start()
        client = await open_connection(HOST, port, KEYS[1], chain_id=CHAIN, allowed=lambda k: True)
        conn = await accepted.get()
        await client.send(b"intact")
        assert await conn.recv() == b"intact"
        proxy.armed = True
        await client.send(b"will be tampered with in transit")
        with pytest.raises(P2PError) as err:
            await conn.recv()
        assert err.value.code == "FRAME_INVALID"
        with pytest.raises(P2PError) as err:
            await conn.recv()
        assert err.value.code == "CONNECTION_CLOSED"
        with pytest.raises(P2PError) as err:
            await asyncio.wait_for(client.recv(), 5)  # the server dropped the connection
        assert err.value.code in {"CONNECTION_CLOSED", "FRAME_INVALID"}
        await client.close()
        await proxy.close()
        server.close()
        await server.wait_closed()

    run(scenario())


# ---- PeerManager --------------------------------------------------------------------------


def test_backoff_is_capped_exponential_with_seeded_jitter() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, base=0.1, cap=2.0, rng=rng) for n in range(10)]
    for n, d in enumerate(delays):
        ceiling = min(2.0, 0.1 * 2**n)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 2.0
    again = random.Random(7)
    assert delays == [backoff_delay(n, base=0.1, cap=2.0, rng=again) for n in range(10)]
    assert backoff_delay(10_000, base=0.1, cap=2.0, rng=rng) <= 2.0


def test_peer_address_is_checked() -> None:
    with pytest.raises(Exception, match="does not match"):
        PeerAddress(KEYS[1].id, KEYS[0].public_key.raw, HOST, 1)
    with pytest.raises(Exception, match="port"):
        PeerAddress.for_key(KEYS[0].public_key.raw, HOST, 0)


def test_two_peers_connect_and_deliver_in_order() -> None:
    async def scenario() -> None:
        a = Node(KEYS[0], seed=1)
        await a.manager.start()
        b = Node(KEYS[1], seed=2, peers=[a.address])  # B knows A from the start
        await b.manager.start()
        a.manager.set_peers([b.address])
        await wait_until(lambda: full_mesh([a, b]), what="a-b connected")
        assert a.manager.connected() == [b.id] and b.manager.connected() == [a.id]
        count = 2000
        for i in range(count):
            assert await a.manager.send(b.id, numbered(i))
            assert await b.manager.broadcast(numbered(i)) == 1
            if i % 200 == 199:  # send never waits: yield so the writers drain the queues
                await asyncio.sleep(0)
        await wait_until(
            lambda: len(a.got.get(b.id, [])) == count and len(b.got.get(a.id, [])) == count,
            what="all messages",
        )
        assert numbers(b.got[a.id]) == list(range(count))
        assert numbers(a.got[b.id]) == list(range(count))
        assert b.got[a.id][5] == numbered(5)
        assert not await a.manager.send(KEYS[5].id, b"to nobody")
        with pytest.raises(P2PError) as err:
            await a.manager.send(b.id, b"x" * (16 * 1024 * 1024 + 1))
        assert err.value.code == "FRAME_TOO_LARGE"
        await stop_all([a, b])

    run(scenario())


def test_four_peers_form_a_full_mesh_with_one_connection_per_pair() -> None:
    async def scenario() -> None:
        nodes = await start_mesh(4)
        # Broadcast while the dial races resolve: nothing may arrive out of order.
        sent = 0
        while not settled(nodes):
            for node in nodes:
                await node.manager.broadcast(numbered(sent))
            sent += 1
            await asyncio.sleep(0)
            assert sent < 100_000
        for _ in range(300):
            for node in nodes:
                assert await node.manager.broadcast(numbered(sent)) == 3
            sent += 1
            if sent % 50 == 0:
                await asyncio.sleep(0)
        last = sent - 1

        def all_last_arrived() -> bool:
            return all(
                len(node.got.get(other.id, [])) > 0 and numbers(node.got[other.id])[-1] == last
                for node in nodes
                for other in nodes
                if other is not node
            )

        await wait_until(all_last_arrived, what="the last broadcast everywhere")
        for node in nodes:
            assert sorted(node.manager.connected()) == sorted(o.id for o in nodes if o is not node)
            for other in nodes:
                if other is node:
                    continue
                seq = numbers(node.got[other.id])
                # In order, no duplicates, and nothing lost once the first message got through.
                assert seq == list(range(seq[0], last + 1)), (node.id, other.id)
            assert node.manager.stats()["messages_dropped"] == 0
        # Every pair dialed at once; both ends kept the connection the smaller ID dialed.
        assert dialed_by_smaller_id(nodes)
        await stop_all(nodes)

    run(scenario())


def test_killed_connection_is_reestablished() -> None:
    async def scenario() -> None:
        nodes = await start_mesh(3)
        await wait_until(lambda: settled(nodes), what="mesh")
        a, b, _ = nodes
        old = a.manager.connection(b.id)
        assert old is not None
        old.abort()  # as if the TCP connection were cut
        await wait_until(
            lambda: (conn := a.manager.connection(b.id)) is not None and conn is not old,
            what="reconnect",
        )
        await wait_until(lambda: settled(nodes), what="mesh again")
        assert a.manager.stats()["disconnects"] >= 1
        assert await a.manager.send(b.id, b"after the cut")
        await wait_until(lambda: a.id in b.got and b.got[a.id][-1] == b"after the cut")
        await stop_all(nodes)

    run(scenario())


def test_restarted_peer_is_reconnected() -> None:
    async def scenario() -> None:
        a, b = await start_mesh(2)
        await wait_until(lambda: full_mesh([a, b]), what="mesh")
        port = b.manager.port
        await b.manager.stop()
        await wait_until(lambda: a.manager.connected() == [], what="a notices")
        await asyncio.sleep(0.3)  # a keeps dialing a closed port, backing off
        b2 = Node(KEYS[1], seed=3, peers=[a.address])
        b2.manager.listen_port = port
        await b2.manager.start()
        await wait_until(lambda: full_mesh([a, b2]), what="reconnect after restart")
        assert await a.manager.send(b2.id, b"welcome back")
        await wait_until(lambda: b2.got.get(a.id) == [b"welcome back"])
        await stop_all([a, b2])

    run(scenario())


def test_unknown_peer_manager_is_never_connected() -> None:
    async def scenario() -> None:
        a, b = await start_mesh(2)
        stranger = Node(KEYS[5], seed=9, peers=[a.address, b.address])
        await stranger.manager.start()
        await wait_until(lambda: full_mesh([a, b]), what="mesh")
        await asyncio.sleep(0.3)  # the stranger dials and redials
        assert a.manager.connected() == [b.id]
        assert b.manager.connected() == [a.id]
        assert stranger.manager.connected() == []
        assert stranger.got == {} and a.got == {} and b.got == {}
        await stop_all([a, b, stranger])

    run(scenario())


def test_membership_change_drops_removed_and_dials_new_peers() -> None:
    async def scenario() -> None:
        a, b, c = [Node(KEYS[i], seed=i) for i in range(3)]
        for node in (a, b, c):
            await node.manager.start()
        a.manager.set_peers([b.address])
        b.manager.set_peers([a.address, c.address])
        c.manager.set_peers([a.address, b.address])
        await wait_until(lambda: a.manager.connected() == [b.id], what="a-b")
        await wait_until(lambda: c.id in b.manager.connected(), what="b-c")
        assert c.id not in a.manager.connected()  # a does not know c yet, so it refuses it
        a.manager.set_peers([c.address])
        await wait_until(lambda: a.manager.connected() == [c.id], what="a-c, without b")
        await asyncio.sleep(0.3)  # b keeps dialing a, which now refuses it
        assert a.manager.connected() == [c.id]
        assert b.manager.connected() == [c.id]
        await stop_all([a, b, c])

    run(scenario())


def test_custom_policy_admits_inbound_only_peers() -> None:
    async def scenario() -> None:
        observer_key = KEYS[4]
        a = Node(KEYS[0], seed=1, allowed=lambda k: k == observer_key.public_key.raw)
        await a.manager.start()
        observer = Node(observer_key, seed=2, peers=[a.address])
        await observer.manager.start()
        await wait_until(
            lambda: (
                a.manager.connected() == [observer.id] and observer.manager.connected() == [a.id]
            ),
            what="observer in",
        )
        assert await observer.manager.send(a.id, b"hello from an observer")
        await wait_until(lambda: a.got.get(observer.id) == [b"hello from an observer"])
        await observer.manager.stop()
        await wait_until(lambda: a.manager.connected() == [], what="observer gone")
        assert a.manager.stats()["links_open"] == 0
        await a.manager.stop()

    run(scenario())


def test_slow_peer_overflows_its_queue_and_is_disconnected() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def stuck(_peer: str, _message: bytes) -> None:
            await release.wait()

        a = Node(KEYS[0], seed=1, queue_limit=4, queue_bytes=1 << 30)
        await a.manager.start()
        b = Node(KEYS[1], seed=2, peers=[a.address], handler=stuck)
        await b.manager.start()
        a.manager.set_peers([b.address])
        await wait_until(lambda: full_mesh([a, b]), what="mesh")
        chunk = b"z" * (1 << 20)
        sent = 0
        while await a.manager.send(b.id, chunk):
            sent += 1
            await asyncio.sleep(0)  # let the writer run: the queue fills only as TCP backs up
            assert sent < 1000, "the queue never overflowed"
        assert a.manager.queue_overflows == 1
        assert a.manager.messages_dropped >= 1
        assert b.id not in a.manager.connected()
        release.set()
        await wait_until(lambda: full_mesh([a, b]), what="reconnect after overflow")
        await stop_all([a, b])

    run(scenario())


def test_burst_beyond_the_queue_bound_is_refused_without_waiting() -> None:
    async def scenario() -> None:
        a = Node(KEYS[0], seed=1, queue_limit=3)
        await a.manager.start()
        b = Node(KEYS[1], seed=2, peers=[a.address])
        await b.manager.start()
        a.manager.set_peers([b.address])
        await wait_until(lambda: full_mesh([a, b]), what="mesh")
        results = [await a.manager.send(b.id, b"m") for _ in range(4)]  # no yield in between
        assert results == [True, True, True, False]
        assert a.manager.queue_overflows == 1
        assert a.manager.messages_dropped == 4  # the refused one and the three queued
        assert await a.manager.broadcast(b"m") == 0
        await stop_all([a, b])

    run(scenario())


def test_handler_errors_do_not_break_the_connection() -> None:
    async def scenario() -> None:
        got: list[bytes] = []

        async def handler(_peer: str, message: bytes) -> None:
            if message == b"bad":
                raise ValueError("handler bug")
            got.append(message)

        a = Node(KEYS[0], seed=1, handler=handler)
        await a.manager.start()
        b = Node(KEYS[1], seed=2, peers=[a.address])
        await b.manager.start()
        a.manager.set_peers([b.address])
        await wait_until(lambda: full_mesh([a, b]), what="mesh")
        for m in (b"one", b"bad", b"two"):
            assert await b.manager.send(a.id, m)
        await wait_until(lambda: got == [b"one", b"two"])
        assert a.manager.connected() == [b.id]
        await stop_all([a, b])

    run(scenario())


def test_stop_leaves_nothing_running() -> None:
    async def scenario() -> None:
        nodes = await start_mesh(3)
        await wait_until(lambda: full_mesh(nodes), what="mesh")
        for node in nodes:
            await node.manager.broadcast(b"in flight")
        # A handshake under way: a TCP client that never says hello.
        _, lurker = await asyncio.open_connection(HOST, nodes[0].manager.port)
        await asyncio.sleep(0.05)
        ports = [node.manager.port for node in nodes]
        await stop_all(nodes)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        for node in nodes:
            assert node.manager.connected() == []
            assert node.manager.stats()["links_open"] == 0
        for port in ports:
            with pytest.raises(OSError):
                await asyncio.open_connection(HOST, port)
        lurker.transport.abort()
        await nodes[0].manager.stop()  # idempotent

    run(scenario())

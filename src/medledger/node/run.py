"""Run one node in the foreground: the API server and the block producer."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import uvicorn

from medledger.api.app import create_app
from medledger.log import configure_logging, get_logger
from medledger.node.config import load_config
from medledger.node.node import Node

log = get_logger("medledger.node")


async def serve(home: Path) -> None:
    node = Node(home)
    app = create_app(node)
    config = uvicorn.Config(
        app,
        host=node.config.api_host,
        port=node.config.api_port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="none",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once serve() returns; with the
    # default SIGTERM disposition that would kill us before the clean-up below.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)

    def halt() -> None:
        server.should_exit = True

    node.on_fatal = halt
    await node.start()
    pid_file = home / "node.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    log.info("node.serving", name=node.config.name, api=node.config.api_url(), pid=os.getpid())
    try:
        await server.serve()
    finally:
        await node.stop()
        try:
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
        except FileNotFoundError:
            pass
        log.info("node.stopped", name=node.config.name)
    if node.fatal:
        raise SystemExit(3)


def run_node(home: Path) -> None:
    configure_logging(load_config(home).log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        pass
    asyncio.run(serve(home))

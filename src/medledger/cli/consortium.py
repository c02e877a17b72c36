"""Creating and running a local consortium: ``init``, ``up``, ``down``, ``status``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from medledger.crypto.keys import PrivateKey, load_key_file, save_key_file
from medledger.dicom.aetitle import default_ae_title
from medledger.dicom.gatewaykey import ensure_gateway_key, gateway_id
from medledger.errors import InvalidInput, NodeError, Unavailable
from medledger.ledger.block import Validator
from medledger.ledger.genesis import ChainParams, Genesis, InstitutionGenesis, genesis_to_json
from medledger.node.config import (
    DicomConfig,
    NodeConfig,
    PeerConfig,
    config_path,
    load_config,
    save_config,
)

INSTITUTION_NAMES = [f"hospital-{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


# Ports a node keeps for its whole life are picked below Linux's ephemeral range
# (32768-60999 by default): a port the kernel hands out (bind to 0) is free now, but
# any outgoing connection may take it before the node listens on it, or while it is
# stopped and restarted.
LISTEN_PORTS = (20000, 32000)
PORT_TRIES = 200


def free_port() -> int:
    """A port on 127.0.0.1 that is free now, outside the ephemeral range."""
    low, high = LISTEN_PORTS
    for _ in range(PORT_TRIES):
        port = low + secrets.randbelow(high - low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # all taken: any
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_consortium(
    root: Path,
    institutions: int,
    *,
    chain_id: str | None = None,
    base_port: int | None = None,
    force: bool = False,
    empty_block_interval_ms: int | None = None,
) -> dict[str, Any]:
    if not 1 <= institutions <= len(INSTITUTION_NAMES):
        raise InvalidInput(f"institutions must be 1..{len(INSTITUTION_NAMES)}", code="BAD_ARGUMENT")
    if root.exists() and any(root.iterdir()):
        if not force:
            raise InvalidInput(
                f"{root} is not empty; use --force to replace it", code="DIR_NOT_EMPTY"
            )
        if any(node_alive(h) for h in node_homes(root)):
            raise InvalidInput(
                f"nodes of {root} are running; run 'medledger down' first", code="NODES_RUNNING"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    chain_id = chain_id or f"medledger-{os.urandom(3).hex()}"
    names = INSTITUTION_NAMES[:institutions]
    insts: list[InstitutionGenesis] = []
    validators: list[Validator] = []
    out: dict[str, Any] = {"dir": str(root), "chain_id": chain_id, "institutions": []}
    node_keys = {name: PrivateKey.generate() for name in names}
    p2p_ports = {
        name: (base_port + 100 + i if base_port else free_port()) for i, name in enumerate(names)
    }
    api_ports = {
        name: (base_port + i if base_port else free_port()) for i, name in enumerate(names)
    }
    dicom_ports = {
        name: (base_port + 200 + i if base_port else free_port()) for i, name in enumerate(names)
    }
    for name in names:
        home = root / name
        admin = PrivateKey.generate()
        node_key = node_keys[name]
        save_key_file(home / "admin.key", admin)
        save_key_file(home / "node.key", node_key)
        ensure_gateway_key(home)
        insts.append(
            InstitutionGenesis(name=name, admin_id=admin.id, admin_public_key=admin.public_key.raw)
        )
        validators.append(
            Validator(name=name, id=node_key.id, public_key=node_key.public_key.raw, power=10)
        )
        port = api_ports[name]
        save_config(
            home,
            NodeConfig(
                name=name,
                chain_id=chain_id,
                api_port=port,
                p2p_port=p2p_ports[name],
                peers=[
                    PeerConfig(
                        name=other,
                        id=node_keys[other].id,
                        public_key=node_keys[other].public_key.hex(),
                        host="127.0.0.1",
                        port=p2p_ports[other],
                        api_url=f"http://127.0.0.1:{api_ports[other]}",
                    )
                    for other in names
                    if other != name
                ],
                empty_block_interval_ms=empty_block_interval_ms,
                dicom=DicomConfig(port=dicom_ports[name], ae_title=default_ae_title(name)),
            ),
        )
        out["institutions"].append(
            {
                "name": name,
                "home": str(home),
                "admin_id": admin.id,
                "admin_key": str(home / "admin.key"),
                "api": f"http://127.0.0.1:{port}",
                "dicom": dicom_listener(home),
            }
        )
    genesis = Genesis(
        chain_id=chain_id,
        genesis_time_ms=time.time_ns() // 1_000_000,
        institutions=insts,
        validators=validators,
        params=ChainParams(),
    )
    text = genesis_to_json(genesis)
    (root / "genesis.json").write_text(text)
    for name in names:
        (root / name / "genesis.json").write_text(text)
    return out


def join_consortium(root: Path, name: str, *, base_port: int | None = None) -> dict[str, Any]:
    """Prepare a new member (or observer) node next to the consortium's nodes.

    The new node gets keys, the consortium's genesis, and every existing node as a
    peer; the existing nodes' configs list it too (used from their next restart).
    It becomes a validator only once a governance proposal admitting it passes
    (``medledger governance propose --add NAME --node-key ... --admin-key ...``); an
    observer's node key is instead enrolled by an admin as a ``service`` identity.
    """
    from medledger.app.model import INSTITUTION_RE

    if not INSTITUTION_RE.match(name):
        raise InvalidInput("name must match [a-z0-9][a-z0-9-]{0,31}", code="BAD_ARGUMENT")
    homes = node_homes(root)
    home = root / name
    if home.exists():
        raise InvalidInput(f"{home} already exists", code="DIR_NOT_EMPTY")
    genesis_text = (root / "genesis.json").read_text()
    admin = PrivateKey.generate()
    node_key = PrivateKey.generate()
    save_key_file(home / "admin.key", admin)
    save_key_file(home / "node.key", node_key)
    ensure_gateway_key(home)
    (home / "genesis.json").write_text(genesis_text)
    peers = []
    for other in homes:
        cfg = load_config(other)
        key = load_key_file(other / cfg.node_key_file)
        peers.append(
            PeerConfig(
                name=cfg.name,
                id=key.id,
                public_key=key.public_key.hex(),
                host=cfg.p2p_host,
                port=cfg.p2p_port,
                api_url=cfg.api_url(),
            )
        )
    first = load_config(homes[0])
    config = NodeConfig(
        name=name,
        chain_id=first.chain_id,
        api_port=base_port if base_port else free_port(),
        p2p_port=base_port + 100 if base_port else free_port(),
        peers=peers,
        empty_block_interval_ms=first.empty_block_interval_ms,
        dicom=DicomConfig(
            port=base_port + 200 if base_port else free_port(), ae_title=default_ae_title(name)
        ),
    )
    save_config(home, config)
    me = PeerConfig(
        name=name,
        id=node_key.id,
        public_key=node_key.public_key.hex(),
        host=config.p2p_host,
        port=config.p2p_port,
        api_url=config.api_url(),
    )
    for other in homes:
        cfg = load_config(other)
        if all(p.id != me.id for p in cfg.peers):
            cfg.peers.append(me)
            save_config(other, cfg)
    return {
        "name": name,
        "home": str(home),
        "api": config.api_url(),
        "dicom": dicom_listener(home),
        "node_id": node_key.id,
        "node_public_key": node_key.public_key.hex(),
        "admin_id": admin.id,
        "admin_public_key": admin.public_key.hex(),
        "node_key": str(home / "node.key"),
        "admin_key": str(home / "admin.key"),
    }


def dicom_listener(home: Path) -> dict[str, Any] | None:
    """The node's DICOM listener as its API's status shows it: ``{"host", "port",
    "ae_title", "gateway_id"}``, None without a listener."""
    listener = load_config(home).dicom_listener()
    if listener is None:
        return None
    return {**listener, "gateway_id": gateway_id(home)}


def node_homes(root: Path) -> list[Path]:
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a consortium directory", code="NOT_A_CONSORTIUM")
    homes = sorted(p for p in root.iterdir() if config_path(p).exists())
    if not homes:
        raise InvalidInput(
            f"{root} holds no node; run 'medledger init' first", code="NOT_A_CONSORTIUM"
        )
    return homes


def read_pid(home: Path) -> int | None:
    try:
        return int((home / "node.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _is_node_process(pid: int, home: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    text = [c.decode(errors="replace") for c in cmdline]
    if "medledger" not in " ".join(text) or "start" not in text:
        return False
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return True
    want = home.resolve()
    return any((cwd / arg).resolve() == want for arg in text if "/" in arg or arg == ".")


def node_alive(home: Path) -> bool:
    pid = read_pid(home)
    return pid is not None and _is_node_process(pid, home)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def start_node(home: Path, *, timeout: float = 30.0) -> int:
    cfg = load_config(home)
    log_file = open(home / "node.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "medledger", "node", "start", "--home", str(home.resolve())],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=str(home),
    )
    log_file.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _log_tail(home / "node.log")
            raise NodeError(
                f"node {cfg.name} exited with {proc.returncode}:\n{tail}", code="NODE_START_FAILED"
            )
        if _healthy(cfg.api_url()):
            return proc.pid
        time.sleep(0.1)
    proc.kill()
    raise Unavailable(
        f"node {cfg.name} did not become healthy in {timeout:.0f}s", code="NODE_START_TIMEOUT"
    )


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def up(root: Path) -> list[dict[str, Any]]:
    out = []
    for home in node_homes(root):
        cfg = load_config(home)
        if node_alive(home):
            out.append(
                {"name": cfg.name, "pid": read_pid(home), "started": False, "api": cfg.api_url()}
            )
            continue
        (home / "node.pid").unlink(missing_ok=True)
        pid = start_node(home)
        out.append({"name": cfg.name, "pid": pid, "started": True, "api": cfg.api_url()})
    return out


def down(root: Path, *, timeout: float = 15.0) -> list[dict[str, Any]]:
    out = []
    for home in node_homes(root):
        cfg = load_config(home)
        pid = read_pid(home)
        if pid is None or not _is_node_process(pid, home):
            (home / "node.pid").unlink(missing_ok=True)
            out.append({"name": cfg.name, "stopped": False})
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _is_node_process(pid, home):
            time.sleep(0.1)
        if _is_node_process(pid, home):
            os.kill(pid, signal.SIGKILL)
        (home / "node.pid").unlink(missing_ok=True)
        out.append({"name": cfg.name, "stopped": True, "pid": pid})
    return out


def status(root: Path) -> dict[str, Any]:
    nodes = []
    for home in node_homes(root):
        cfg = load_config(home)
        alive = node_alive(home)
        entry: dict[str, Any] = {
            "name": cfg.name,
            "home": str(home),
            "api": cfg.api_url(),
            "pid": read_pid(home) if alive else None,
            "running": False,
            "height": None,
            "app_hash": None,
            "validator": None,
            "peers": [],
            "chain_id": cfg.chain_id,
            "dicom": dicom_listener(home),
        }
        if alive:
            try:
                st = httpx.get(cfg.api_url() + "/api/v1/status", timeout=2.0).json()
                entry.update(
                    peers=st.get("peers", []),
                    running=True,
                    height=st["height"],
                    app_hash=st["app_hash"],
                    validator=st["validator"],
                    node_id=st["node_id"],
                    dicom=st.get("dicom"),
                )
            except (httpx.HTTPError, ValueError, KeyError):
                pass
        nodes.append(entry)
    return {"nodes": nodes}


def admin_key(root: Path, name: str) -> PrivateKey:
    return load_key_file(root / name / "admin.key")


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2)

"""Helpers of the integration suite: run the CLI, run and inspect a consortium.

A :class:`Consortium` is registered in ``RUNNING`` from its ``init`` until
:meth:`Consortium.stop`, so a failing test can show its nodes' logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from medledger.api import signing
from medledger.client import Client
from medledger.crypto.keys import PrivateKey, load_key_file, save_key_file

CLI_TIMEOUT_S = 120.0
LOG_TAIL_LINES = 80
CHUNK_SIZE = 256 * 1024

# Consortia whose nodes may be running, by directory.
RUNNING: dict[Path, Consortium] = {}


# ---- the CLI -----------------------------------------------------------------------------


class CliResult(NamedTuple):
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI run: ours, minus MEDLEDGER_* unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDLEDGER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = CLI_TIMEOUT_S,
) -> CliResult:
    """Run ``medledger ARGS`` with this interpreter; return (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "medledger", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(env),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def cli_json(*args: str | Path, **kw: Any) -> Any:
    """Run a CLI command that must succeed (``--json`` is added); return its JSON."""
    r = run_cli(*args, "--json", **kw)
    assert r.code == 0, f"medledger {' '.join(map(str, args))} exited {r.code}:\n{r.err}"
    return r.json()


def assert_cli_error(r: CliResult, code: str) -> None:
    """A failed command: exit 1, nothing on stdout, one ``error: CODE: msg`` line.

    (Blank lines are allowed: a transient progress bar leaves one on a non-terminal.)
    """
    assert r.code == 1, f"expected failure {code}, got exit {r.code}:\n{r.out}{r.err}"
    assert r.out == "", f"a failed command printed to stdout: {r.out!r}"
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"stderr is not one error line: {r.err!r}"
    assert lines[0].startswith(f"error: {code}: "), f"expected error {code}, got {r.err!r}"


# ---- processes ----------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """A live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def is_node_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return pid_alive(pid) and b"medledger" in cmdline and b"start" in cmdline


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)


def sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    assert wait_dead(pid), f"pid {pid} survived SIGKILL"


# ---- a consortium ---------------------------------------------------------------------------


class Identity(NamedTuple):
    id: str
    key_file: Path
    key: PrivateKey


class Consortium:
    """A consortium directory ``dir`` (nodes) beside a work directory ``work`` (keys, files)."""

    def __init__(self, base: Path) -> None:
        self.work = base
        self.dir = base / "consortium"
        self.info: dict[str, Any] = {}
        self.pids: set[int] = set()

    # -- lifecycle --

    def init(self, institutions: int = 1) -> dict[str, Any]:
        RUNNING[self.dir] = self
        self.info = cli_json("init", "--dir", self.dir, "--institutions", str(institutions))
        return self.info

    def up(self) -> dict[str, Any]:
        r = run_cli("up", "--dir", self.dir, "--json")
        assert r.code == 0, f"medledger up failed:\n{r.err}\n{self.log_tails()}"
        doc: dict[str, Any] = r.json()
        self.pids.update(n["pid"] for n in doc["nodes"] if n.get("pid"))
        return doc

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = cli_json("status", "--dir", self.dir)
        self.pids.update(n["pid"] for n in doc["nodes"] if n.get("pid"))
        return doc

    def down(self) -> dict[str, Any]:
        doc: dict[str, Any] = cli_json("down", "--dir", self.dir)
        return doc

    def stop(self) -> None:
        """Teardown: ``down``, then SIGKILL whatever node process is left."""
        try:
            if self.dir.is_dir():
                run_cli("down", "--dir", self.dir, timeout=60)
        finally:
            for home in self.homes():
                with contextlib.suppress(FileNotFoundError, ValueError):
                    self.pids.add(int((home / "node.pid").read_text().strip()))
            for pid in self.pids:
                if is_node_process(pid):
                    sigkill(pid)
            RUNNING.pop(self.dir, None)

    # -- the first institution (tests use one) --

    @property
    def inst(self) -> dict[str, Any]:
        inst: dict[str, Any] = self.info["institutions"][0]
        return inst

    @property
    def api(self) -> str:
        return str(self.inst["api"])

    @property
    def home(self) -> Path:
        return self.dir / self.inst["name"]

    @property
    def admin_key_file(self) -> Path:
        return Path(self.inst["admin_key"])

    @property
    def chain_id(self) -> str:
        return str(self.info["chain_id"])

    def node_pid(self) -> int:
        pid = self.status()["nodes"][0]["pid"]
        assert isinstance(pid, int), "node is not running"
        return pid

    def homes(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if (p / "config.json").exists())

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for home in self.homes():
            log = home / "node.log"
            text = log.read_text(errors="replace") if log.exists() else "(no node.log)"
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"=== {log} (last {lines} lines) ===\n{tail}")
        return "\n".join(parts)

    # -- identities and clients (fast paths, without the CLI) --

    @property
    def admin_key(self) -> PrivateKey:
        return load_key_file(self.admin_key_file)

    def admin(self) -> Client:
        return Client(self.api, self.admin_key)

    def client(self, who: Identity | PrivateKey) -> Client:
        return Client(self.api, who.key if isinstance(who, Identity) else who)

    def new_key(self, name: str) -> Identity:
        path = self.work / f"{name}.key"
        key = PrivateKey.generate()
        save_key_file(path, key)
        return Identity(key.id, path, key)

    def enroll(self, name: str, role: str) -> Identity:
        ident = self.new_key(name)
        with self.admin() as admin:
            receipt = admin.enroll(ident.id, role)
        assert receipt["code"] == "OK", receipt
        return ident

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=30.0)

    def chain_state(self) -> tuple[int, str]:
        """(height, app_hash) from the node's status endpoint."""
        doc = httpx.get(self.api + "/api/v1/status", timeout=10.0).json()
        return int(doc["height"]), str(doc["app_hash"])

    def healthy(self) -> bool:
        try:
            return httpx.get(self.api + "/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False


@contextlib.contextmanager
def running_consortium(base: Path, *, start: bool = True) -> Iterator[Consortium]:
    c = Consortium(base)
    try:
        if start:
            c.init()
            c.up()
        yield c
    finally:
        c.stop()


# ---- the API ------------------------------------------------------------------------------------


def signed_headers(key: PrivateKey, method: str, path_qs: str, body: bytes = b"") -> dict[str, str]:
    """The X-MedLedger-* headers of a request signed by ``key`` now."""
    return signing.sign_request(
        key, method, path_qs, time.time_ns() // 1_000_000, signing.body_hash(body)
    )


def signed_get(http: httpx.Client, key: PrivateKey, path_qs: str) -> httpx.Response:
    return http.get(path_qs, headers=signed_headers(key, "GET", path_qs))


def expect_error(resp: httpx.Response, status: int, code: str, context: str = "") -> dict[str, Any]:
    """An API error: this status and ``{"error": {"code": code, "message": str}}``."""
    where = f"{context}: " if context else ""
    got = f"{resp.status_code} {resp.text}"
    assert resp.status_code == status, f"{where}want {status} {code}, got {got}"
    doc = resp.json()
    assert set(doc) == {"error"}, f"{where}{doc}"
    err: dict[str, Any] = doc["error"]
    assert err["code"] == code, f"{where}want {code}, got {err}"
    assert isinstance(err["message"], str) and err["message"], f"{where}{err}"
    return err

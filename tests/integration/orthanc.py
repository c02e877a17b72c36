"""A real Orthanc server (Debian's ``orthanc`` package) for the interoperability tests
and the DICOM ingest benchmark.

:func:`start_orthanc` writes an Orthanc JSON configuration into a work directory
(storage and index in it, HTTP and DICOM ports free on 127.0.0.1, REST access from
loopback only and without authentication, its own AE title, the DICOM peers it knows
as ``DicomModalities``), runs the ``Orthanc`` binary on it and returns once
``GET /system`` answers. :meth:`Orthanc.stop` ends it (SIGTERM, then SIGKILL after a
short grace). The system service the package installs is never used (``make
dicom-tools`` keeps it from starting).

Orthanc's options that matter here (Orthanc 1.10):

* ``SyncStorageArea`` (default true since 1.7.4): each received file is fsynced
  before Orthanc answers; the benchmark runs both settings;
* ``DicomAlwaysAllowEcho``/``DicomAlwaysAllowStore`` false: only the listed
  modalities may call it (MedLedger's node, for C-MOVE sub-operations);
* ``DicomCheckCalledAet`` true: a call to another AE title is refused;
* the DICOMweb plugin (package ``orthanc-dicomweb``) is loaded when installed:
  ``/dicom-web/`` then answers.

The benchmark imports this module with ``tests/integration`` on ``sys.path``, so it
must not use relative imports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

HOST = "127.0.0.1"
DEFAULT_AET = "ORTHANC"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
LOG_TAIL_LINES = 40
BINARY_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class OrthancError(RuntimeError):
    """Orthanc could not be found, started or reached."""


def orthanc_binary() -> str | None:
    """The ``Orthanc`` executable (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("Orthanc")
    if found:
        return found
    for path in BINARY_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Modality:
    """A DICOM peer Orthanc knows: its AE title, address and port."""

    ae_title: str
    host: str
    port: int

    def config(self) -> dict[str, Any]:
        return {
            "AET": self.ae_title,
            "Host": self.host,
            "Port": self.port,
            "AllowEcho": True,
            "AllowStore": True,
            "AllowFind": True,
            "AllowMove": True,
            "AllowGet": True,
        }


@dataclass
class Orthanc:
    """A running Orthanc: its REST URL, DICOM port and AE title."""

    url: str
    http_port: int
    dicom_port: int
    ae_title: str
    workdir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    dicomweb: bool
    start_seconds: float
    _log: IO[bytes] | None = field(default=None, repr=False)
    _http: httpx.Client | None = field(default=None, repr=False)

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, timeout=120.0)
        return self._http

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """End the server: SIGTERM, SIGKILL if still alive after ``grace`` s. Idempotent."""
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no Orthanc log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- REST helpers (raise OrthancError with the server's answer and log tail) --

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        resp = self.http.request(method, path, **kw)
        if resp.status_code >= 400:
            raise OrthancError(
                f"Orthanc {method} {path}: {resp.status_code} {resp.text[:500]}\n{self.log_tail()}"
            )
        return resp

    def get_json(self, path: str) -> Any:
        return self.request("GET", path).json()

    def post_json(self, path: str, body: Any) -> Any:
        return self.request("POST", path, content=json.dumps(body).encode()).json()

    def upload(self, data: bytes) -> dict[str, Any]:
        """``POST /instances``: store one DICOM file; Orthanc's answer (ID, ParentStudy...)."""
        doc: dict[str, Any] = self.request(
            "POST", "/instances", content=data, headers={"Content-Type": "application/dicom"}
        ).json()
        return doc

    def add_modality(self, name: str, modality: Modality) -> None:
        """``PUT /modalities/{name}``: a DICOM peer, added while Orthanc runs."""
        self.request("PUT", f"/modalities/{name}", content=json.dumps(modality.config()))

    def echo(self, name: str) -> httpx.Response:
        """``POST /modalities/{name}/echo``: C-ECHO to the peer (200 on success)."""
        return self.http.post(f"/modalities/{name}/echo", content=b"{}")

    def study_id(self, study_uid: str) -> str | None:
        """Orthanc's ID of the study with this StudyInstanceUID, if it holds it."""
        # the body is the bare identifier (not JSON); the answer lists [{"ID", "Type", ...}]
        found = self.request("POST", "/tools/lookup", content=study_uid.encode()).json()
        for item in found:
            if item.get("Type") == "Study":
                return str(item["ID"])
        return None

    def instance_files(self, study_id: str) -> dict[str, bytes]:
        """SOPInstanceUID -> the Part 10 file Orthanc stored, for one study."""
        out = {}
        for inst in self.get_json(f"/studies/{study_id}/instances"):
            tags = inst.get("MainDicomTags", {})
            out[str(tags["SOPInstanceUID"])] = self.request(
                "GET", f"/instances/{inst['ID']}/file"
            ).content
        return out

    def statistics(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.get_json("/statistics")
        return doc


def orthanc_config(
    workdir: Path,
    *,
    http_port: int,
    dicom_port: int,
    ae_title: str,
    modalities: dict[str, Modality],
    sync_storage: bool,
    dicomweb: bool,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "Name": f"medledger-test-{ae_title}",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "TemporaryDirectory": str(workdir / "tmp"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # REST from loopback only...
        "AuthenticationEnabled": False,  # ...so no credentials are needed
        "DicomServerEnabled": True,
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomModalities": {name: m.config() for name, m in modalities.items()},
        "DicomModalitiesInDatabase": False,
        "SyncStorageArea": sync_storage,
        "SaveJobs": False,
        "HttpDescribeErrors": True,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
    }
    if dicomweb:
        cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False}
    return cfg


def start_orthanc(
    workdir: Path,
    *,
    ae_title: str = DEFAULT_AET,
    modalities: dict[str, Modality] | None = None,
    sync_storage: bool = True,
    dicomweb: bool | None = None,
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT_S,
) -> Orthanc:
    """Start an Orthanc whose files all live in ``workdir``; wait for its REST API.

    ``dicomweb`` None: load the DICOMweb plugin when it is installed. ``env`` adds
    environment variables (``TCP_NODELAY=1``: dcmtk, inside Orthanc, then disables
    Nagle's algorithm on its DICOM connections, as Debian's build does not by default).
    """
    binary = orthanc_binary()
    if binary is None:
        raise OrthancError(
            "Orthanc is not installed (make dicom-tools, or apt-get install orthanc)"
        )
    if dicomweb is None:
        dicomweb = DICOMWEB_PLUGIN.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("storage", "index", "tmp"):
        (workdir / sub).mkdir(exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config_path = workdir / "orthanc.json"
    config_path.write_text(
        json.dumps(
            orthanc_config(
                workdir,
                http_port=http_port,
                dicom_port=dicom_port,
                ae_title=ae_title,
                modalities=modalities or {},
                sync_storage=sync_storage,
                dicomweb=dicomweb,
            ),
            indent=2,
        )
    )
    log_path = workdir / "orthanc.log"
    log = open(log_path, "ab")  # noqa: SIM115  (closed by Orthanc.stop)
    started = time.monotonic()
    proc = subprocess.Popen(
        [binary, str(config_path)],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    server = Orthanc(
        url=f"http://{HOST}:{http_port}",
        http_port=http_port,
        dicom_port=dicom_port,
        ae_title=ae_title,
        workdir=workdir,
        config_path=config_path,
        log_path=log_path,
        process=proc,
        dicomweb=dicomweb,
        start_seconds=0.0,
        _log=log,
    )
    deadline = started + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with {proc.returncode} at start:\n{server.log_tail()}"
                )
            try:
                if httpx.get(server.url + "/system", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise OrthancError(f"Orthanc did not answer in {timeout} s:\n{server.log_tail()}")
            time.sleep(0.1)
    except BaseException:
        server.stop()
        raise
    server.start_seconds = time.monotonic() - started
    return server


@contextlib.contextmanager
def running_orthanc(workdir: Path, **kw: Any) -> Iterator[Orthanc]:
    """:func:`start_orthanc`, always stopped on exit."""
    server = start_orthanc(workdir, **kw)
    try:
        yield server
    finally:
        server.stop()

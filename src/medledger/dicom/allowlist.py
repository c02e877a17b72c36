"""The AE-title allow-list: which calling AE titles this node's SCP accepts, and as whom.

Each entry maps one calling AE title to a MedLedger identity (an active ``service``
of this node's institution, checked by the API when the entry is made and by the
gateway at every association). The list is the institution's own configuration,
kept off chain in ``<home>/dicom/allowed_aes.json`` (mode 0600, directory 0700),
replaced atomically on every change::

    {"version": 1,
     "allowed": [{"ae_title": "CT_SCANNER_1", "identity": "ml...",
                  "added_by": "ml...", "added_ms": 1767225600000},
                 {"ae_title": "VIEWER_1", "identity": "ml...", "added_by": "ml...",
                  "added_ms": 1767225600000, "host": "10.0.0.7", "port": 11112}]}

An entry with a network address (``host``, ``port``) is also a C-MOVE destination:
the node opens an association to it to send what a C-MOVE asked for. Entries
without one (a file of the first version) are callers only.

The SCP's association threads read it while the API changes it, so every access
goes through one lock, and a change is written to disk before it is visible.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from pathlib import Path

import msgspec

from medledger.crypto.keys import is_identity_id
from medledger.dicom.aetitle import ae_title_problem, validate_ae_title
from medledger.errors import Conflict, InvalidInput, NodeError, NotFound
from medledger.fsutil import atomic_write

FORMAT_VERSION = 1
MAX_ALLOWED_AES = 4096


class AllowedAE(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    ae_title: str
    identity: str
    added_by: str
    added_ms: int
    host: str = ""  # a C-MOVE destination's address ("" with port 0: none)
    port: int = 0


_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def address_problem(host: str, port: int) -> str | None:
    """Why ``host``/``port`` is not a usable C-MOVE destination address, or None.

    Both empty/0 (no address) is fine. Otherwise ``host`` is an IP address or a
    hostname (RFC 1123: dot-separated labels of letters, digits and hyphens, at most
    253 characters) and ``port`` 1 to 65535.
    """
    if host == "" and port == 0:
        return None
    if not host or not 1 <= port <= 65535:
        return "a destination needs both a host and a port from 1 to 65535"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.rstrip(".").split(".") if len(host) <= 253 else []
    if not labels or not all(_HOSTNAME_LABEL.fullmatch(x) for x in labels):
        return "the host is neither an IP address nor a hostname"
    return None


def validate_address(host: object, port: object) -> tuple[str, int]:
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        raise InvalidInput("host is a string and port an integer", code="BAD_ADDRESS")
    problem = address_problem(host, port)
    if problem is not None:
        raise InvalidInput(problem, code="BAD_ADDRESS")
    return host, port


class _AllowFile(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    allowed: list[AllowedAE]


def allowed_json(entry: AllowedAE) -> dict[str, object]:
    return {
        "ae_title": entry.ae_title,
        "identity": entry.identity,
        "added_by": entry.added_by,
        "added_ms": entry.added_ms,
        "host": entry.host or None,
        "port": entry.port or None,
    }


class AllowList:
    """The allow-list file of one node, loaded at start and kept in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, AllowedAE] = self._load()

    def _load(self) -> dict[str, AllowedAE]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise NodeError(
                f"cannot read the DICOM allow-list {self.path}: {exc.strerror}",
                code="DICOM_ALLOWLIST_INVALID",
            )
        try:
            doc = msgspec.json.decode(data, type=_AllowFile)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise NodeError(
                f"the DICOM allow-list {self.path} is invalid: {exc}",
                code="DICOM_ALLOWLIST_INVALID",
            )
        if doc.version != FORMAT_VERSION:
            raise NodeError(
                f"the DICOM allow-list {self.path} has version {doc.version}, "
                f"this node reads {FORMAT_VERSION}",
                code="DICOM_ALLOWLIST_INVALID",
            )
        entries: dict[str, AllowedAE] = {}
        for e in doc.allowed:
            problem = ae_title_problem(e.ae_title)
            if problem is None and not (is_identity_id(e.identity) and is_identity_id(e.added_by)):
                problem = "an entry's identity or added_by is not an identity ID"
            if problem is None:
                problem = address_problem(e.host, e.port)
            if problem is None and e.ae_title in entries:
                problem = "an AE title is listed twice"
            if problem is not None:
                raise NodeError(
                    f"the DICOM allow-list {self.path} is invalid: {problem} ({e.ae_title!r})",
                    code="DICOM_ALLOWLIST_INVALID",
                )
            entries[e.ae_title] = e
        return entries

    def _save(self, entries: dict[str, AllowedAE]) -> None:
        doc = _AllowFile(version=FORMAT_VERSION, allowed=[entries[t] for t in sorted(entries)])
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.path, msgspec.json.format(msgspec.json.encode(doc)) + b"\n", mode=0o600)

    def get(self, ae_title: str) -> AllowedAE | None:
        with self._lock:
            return self._entries.get(ae_title)

    def entries(self) -> list[AllowedAE]:
        """Every entry, sorted by AE title."""
        with self._lock:
            return [self._entries[t] for t in sorted(self._entries)]

    def allow(
        self,
        ae_title: str,
        identity: str,
        *,
        added_by: str,
        now_ms: int,
        host: str = "",
        port: int = 0,
    ) -> tuple[AllowedAE, bool]:
        """Map ``ae_title`` to ``identity`` (at ``host``:``port`` when it is a C-MOVE
        destination); return the entry and whether it is new.

        Allowing a title again for the same identity changes nothing but its address. A
        title mapped to another identity is refused (``AE_TITLE_IN_USE``): deny it
        first, so that no caller silently changes hands. ``BAD_ADDRESS``: a host that
        is neither an IP address nor a hostname, or a port outside 1-65535.
        """
        validate_ae_title(ae_title)
        if not is_identity_id(identity) or not is_identity_id(added_by):
            raise InvalidInput("not a MedLedger identity ID", code="BAD_IDENTITY_ID")
        validate_address(host, port)
        with self._lock:
            current = self._entries.get(ae_title)
            if current is not None:
                if current.identity == identity:
                    if (current.host, current.port) == (host, port):
                        return current, False
                    moved = msgspec.structs.replace(current, host=host, port=port)
                    entries = {**self._entries, ae_title: moved}
                    self._save(entries)
                    self._entries = entries
                    return moved, False
                raise Conflict(
                    f"AE title {ae_title!r} is mapped to {current.identity}; deny it first",
                    code="AE_TITLE_IN_USE",
                )
            if len(self._entries) >= MAX_ALLOWED_AES:
                raise InvalidInput(
                    f"the allow-list holds {MAX_ALLOWED_AES} AE titles already",
                    code="TOO_MANY_AE_TITLES",
                )
            entry = AllowedAE(
                ae_title=ae_title,
                identity=identity,
                added_by=added_by,
                added_ms=now_ms,
                host=host,
                port=port,
            )
            entries = {**self._entries, ae_title: entry}
            self._save(entries)
            self._entries = entries
            return entry, True

    def deny(self, ae_title: str) -> AllowedAE:
        """Remove ``ae_title``; return the removed entry (``AE_TITLE_NOT_FOUND`` if none)."""
        with self._lock:
            current = self._entries.get(ae_title)
            if current is None:
                raise NotFound(f"AE title {ae_title!r} is not allowed", code="AE_TITLE_NOT_FOUND")
            entries = {t: e for t, e in self._entries.items() if t != ae_title}
            self._save(entries)
            self._entries = entries
            return current

"""The node's DICOM side: the SCP, and who may call it.

An association is accepted when

1. the called AE title is this node's (checked by :class:`~.scp.DicomSCP`);
2. the calling AE title is on this node's allow-list (:mod:`.allowlist`); and
3. the identity it is mapped to is, in the node's committed state, an active
   ``service`` identity of this node's institution.

Step 3 runs at every association, so suspending the identity on chain shuts its AE
titles out from the next association on, without touching the allow-list. The
committed state belongs to the node's event loop (blocks are committed there), so
the association thread hands the lookup to the loop and waits for it, briefly; a
loop that does not answer in time refuses the association as transient (the
caller may retry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medledger.app.model import ACTIVE, Identity, Role
from medledger.dicom.allowlist import AllowedAE, AllowList
from medledger.dicom.scp import DicomSCP, Verdict
from medledger.log import get_logger

log = get_logger("medledger.dicom")

LOOKUP_TIMEOUT_S = 5.0
ALLOWLIST_FILE = Path("dicom") / "allowed_aes.json"


def decide(entry: AllowedAE | None, identity: Identity | None, institution: str) -> Verdict:
    """Whether a calling AE title with this allow-list ``entry`` may associate."""
    if entry is None:
        return Verdict(False, "unknown_calling_ae")
    who = entry.identity
    if identity is None:
        return Verdict(False, "identity_not_enrolled", who)
    if identity.status != ACTIVE:
        return Verdict(False, "identity_suspended", who)
    if identity.role != Role.SERVICE.value:
        return Verdict(False, "not_a_service", who)
    if identity.institution != institution:
        return Verdict(False, "other_institution", who)
    return Verdict(True, "allowed", who)


class DicomGateway:
    """The allow-list of a node (always) and its SCP (when ``port`` is set)."""

    def __init__(
        self,
        home: Path,
        *,
        institution: str,
        host: str,
        port: int,
        ae_title: str,
        lookup_identity: Callable[[str], Identity | None],
    ) -> None:
        self.institution = institution
        self.host = host
        self.port = port
        self.ae_title = ae_title
        self.allowlist = AllowList(home / ALLOWLIST_FILE)
        self._lookup = lookup_identity
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scp: DicomSCP | None = None

    @property
    def enabled(self) -> bool:
        return self.port > 0

    def listener_json(self) -> dict[str, Any] | None:
        """``{"host", "port", "ae_title"}`` of the SCP, None when it is disabled."""
        if not self.enabled:
            return None
        return {"host": self.host, "port": self.port, "ae_title": self.ae_title}

    async def start(self) -> None:
        if not self.enabled:
            return
        self._loop = asyncio.get_running_loop()
        scp = DicomSCP(self.host, self.port, self.ae_title, self.authorize)
        scp.start()
        self._scp = scp

    async def stop(self) -> None:
        scp, self._scp = self._scp, None
        if scp is not None:
            # off the loop: association threads may be waiting on it for a lookup
            await asyncio.to_thread(scp.stop)

    def authorize(self, calling_ae: str) -> Verdict:
        """Decide one association request (called in an association thread)."""
        entry = self.allowlist.get(calling_ae)
        if entry is None:
            return decide(None, None, self.institution)
        loop = self._loop
        if loop is None or loop.is_closed():
            return Verdict(False, "node_stopping", entry.identity, transient=True)

        async def lookup() -> Identity | None:
            return self._lookup(entry.identity)

        try:
            future = asyncio.run_coroutine_threadsafe(lookup(), loop)
        except RuntimeError:  # the loop is closing
            return Verdict(False, "node_stopping", entry.identity, transient=True)
        try:
            identity = future.result(LOOKUP_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            return Verdict(False, "node_busy", entry.identity, transient=True)
        return decide(entry, identity, self.institution)

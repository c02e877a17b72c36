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

C-STORE (ADR 0008, second slice): the SCP hands each checked instance to
:meth:`DicomGateway.store`, which spools it durably (:mod:`.spool`) under the study's
StudyInstanceUID. A sealer thread closes a study once no instance arrived for
``quiet_s`` and no association that sent it is still open, and stores it as one
``imaging-study`` record through the node's own API with the node's gateway key
(:mod:`.gatewaykey`), exactly as ``medledger record put DIR`` would (encrypted here,
key split among the custodians, erasure-coded), naming the calling AE title's
service identity in ``on_behalf_of``. The record's patient is the ledger patient the
institution linked to the DICOM PatientID (:mod:`.patients`); a PatientID no one linked
yet is filed under a pseudonymous patient the gateway enrolls for it
(``patient.pseudonym``), merged into the real one when the admin links it. Instances of
a study that arrive after it was stored become a part of its first record
(``part_of``): one transaction per quiet period, not per instance. A study that cannot
be stored (gateway not enrolled, node unreachable) stays in the spool and is retried
every ``retry_s`` and whenever a patient link is added.

Query and retrieval (ADR 0008, "Query and retrieval (built)"): once a study's record
is registered, its instances are entered in the node's study index (:mod:`.index`,
read from the spooled files before they are deleted). The gateway is the SCP's
:class:`~.scp.QueryService`: C-FIND answers from the index, restricted to the records
the calling AE title's identity may see (:mod:`.visibility`, evaluated on the event
loop); C-MOVE and C-GET read each matched record through the node's API with the
gateway key on behalf of that identity (:mod:`.retrieve`: one committed, audited
access event per record), and C-MOVE sends only to AE titles on the allow-list with
an address.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medledger.app.model import ACTIVE, PSEUDONYM_ENROLL, Identity, PseudonymBody, Role
from medledger.crypto.keys import PrivateKey
from medledger.dicom.allowlist import AllowedAE, AllowList
from medledger.dicom.gatewaykey import ensure_gateway_key
from medledger.dicom.index import INDEX_FILE, IndexedInstance, StudyIndex, read_instance
from medledger.dicom.patients import PATIENTS_FILE, PatientLink, PatientLinks
from medledger.dicom.scp import (
    DEFAULT_MAX_INSTANCE_BYTES,
    MAX_FIND_MATCHES,
    MAX_RETRIEVE_INSTANCES,
    STATUS_DATASET_MISMATCH,
    DicomSCP,
    ReceivedInstance,
    Refused,
    Verdict,
)
from medledger.dicom.spool import Batch, Spool, StudyMeta
from medledger.errors import MedLedgerError, Unavailable
from medledger.log import get_logger

if TYPE_CHECKING:
    from medledger.client import Client

log = get_logger("medledger.dicom")

LOOKUP_TIMEOUT_S = 5.0
SEAL_POLL_S = 0.2
SEAL_JOIN_TIMEOUT_S = 10.0
ALLOWLIST_FILE = Path("dicom") / "allowed_aes.json"
RETRIEVE_PURPOSE = "treatment"  # what a DICOM device's C-MOVE/C-GET read is for

T = TypeVar("T")
Visibility = Callable[[Identity, Iterable[str]], set[str]]


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


_SELF = AllowedAE(ae_title="-", identity="-", added_by="-", added_ms=0)


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
        api_url: str = "",
        quiet_s: float = 5.0,
        retry_s: float = 30.0,
        max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
    ) -> None:
        self.institution = institution
        self.host = host
        self.port = port
        self.ae_title = ae_title
        self.allowlist = AllowList(home / ALLOWLIST_FILE)
        self.patients = PatientLinks(home / PATIENTS_FILE)
        self.gateway_key = ensure_gateway_key(home)
        self.spool = Spool(home / "dicom")
        self.index = StudyIndex(home / INDEX_FILE)
        # set by the API (medledger.api.dicom_routes), which holds the node:
        # medledger.dicom.visibility.visible_record_ids bound to it
        self.visibility: Visibility | None = None
        self.api_url = api_url
        self.quiet_s = quiet_s
        self.retry_s = retry_s
        self.max_instance_bytes = max_instance_bytes
        self._lookup = lookup_identity
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scp: DicomSCP | None = None
        self._sealer: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()

    @property
    def gateway_id(self) -> str:
        return self.gateway_key.id

    @property
    def enabled(self) -> bool:
        return self.port > 0

    def listener_json(self) -> dict[str, Any] | None:
        """``{"host", "port", "ae_title"}`` of the SCP, None when it is disabled."""
        if not self.enabled:
            return None
        return {
            "host": self.host,
            "port": self.port,
            "ae_title": self.ae_title,
            "gateway_id": self.gateway_id,
        }

    def gateway_enrolled(self) -> bool:
        """Whether the gateway key is an active ``service`` of this institution."""
        ident = self._lookup(self.gateway_id)
        return decide(_SELF, ident, self.institution).accepted

    async def start(self) -> None:
        if not self.enabled:
            return
        self._loop = asyncio.get_running_loop()
        scp = DicomSCP(
            self.host,
            self.port,
            self.ae_title,
            self.authorize,
            store=self.store,
            query=self,
            on_closed=self.spool.association_closed,
            max_instance_bytes=self.max_instance_bytes,
        )
        scp.start()
        self._scp = scp
        self._stop.clear()
        self._sealer = threading.Thread(target=self._seal_loop, name="dicom-sealer", daemon=True)
        self._sealer.start()

    async def stop(self) -> None:
        scp, self._scp = self._scp, None
        if scp is not None:
            # off the loop: association threads may be waiting on it for a lookup
            await asyncio.to_thread(scp.stop)
        sealer, self._sealer = self._sealer, None
        if sealer is not None:
            self._stop.set()
            self._wake.set()
            # a seal in progress calls this node's API: let it fail or finish, briefly
            await asyncio.to_thread(sealer.join, SEAL_JOIN_TIMEOUT_S)

    def wake(self) -> None:
        """Retry the studies waiting in the spool now (a patient link was added)."""
        self._wake.set()

    # ---- C-STORE (association threads) ---------------------------------------------------

    def store(self, verdict: Verdict, calling_ae: str, instance: ReceivedInstance) -> None:
        """Spool one instance durably (fsynced) before the SCP answers Success."""
        meta = StudyMeta(
            identity=verdict.identity, calling_ae=calling_ae, patient_id=instance.patient_id
        )
        try:
            self.spool.put(
                instance.study_uid, instance.sop_uid, instance.data, meta, instance.association
            )
        except MedLedgerError as exc:
            raise Refused(str(exc), code=exc.code, status=STATUS_DATASET_MISMATCH)

    # ---- sealing (the sealer thread) -----------------------------------------------------

    def _seal_loop(self) -> None:
        next_retry = 0.0  # batches left by an earlier run: at once
        while not self._stop.is_set():
            try:
                for study_uid in self.spool.due(self.quiet_s):
                    batch = self.spool.close(study_uid)
                    if batch is not None and not self._stop.is_set():
                        self.seal(batch)
                now = time.monotonic()
                if self._wake.is_set() or now >= next_retry:
                    self._wake.clear()
                    next_retry = now + self.retry_s
                    for batch in self.spool.batches():
                        if self._stop.is_set():
                            break
                        self.seal(batch)
            except Exception:  # pragma: no cover - the loop must survive anything
                log.exception("dicom.sealer_failed")
            self._wake.wait(SEAL_POLL_S)

    def seal(self, batch: Batch) -> str | None:
        """Store ``batch`` as one record; return its ID (None: kept for a retry)."""
        from medledger.client import Client  # httpx and the client: only when sealing
        from medledger.study import STUDY_RECORD_TYPE, scan_study

        started = time.monotonic()
        try:
            archive = scan_study(batch.path)
            with Client(self.api_url, self.gateway_key) as client:
                link = self.patients.get(batch.meta.patient_id) or self._pseudonym(
                    client, batch.meta.patient_id
                )
                part_of = self._first_record(client, batch.study_uid, link.patient)
                with archive.open() as src:
                    result = client.put_stream(
                        src,
                        archive.size,
                        patient=link.patient,
                        record_type=STUDY_RECORD_TYPE,
                        on_behalf_of=batch.meta.identity,
                        part_of=part_of,
                    )
        except Exception as exc:
            code = exc.code if isinstance(exc, MedLedgerError) else type(exc).__name__
            log.error(
                "dicom.seal_failed",
                study_uid=batch.study_uid,
                code=code,
                message=str(exc)[:300],
                identity=batch.meta.identity,
                spool=str(batch.path),
            )
            return None
        self._index_batch(batch, archive.files, result.record_id, link.patient)
        log.info(
            "dicom.study_sealed",
            study_uid=batch.study_uid,
            record_id=result.record_id,
            part_of=part_of or None,
            pseudonymous=link.pseudonymous,
            instances=archive.instances,
            size=archive.size,
            identity=batch.meta.identity,
            gateway=self.gateway_id,
            seconds=round(time.monotonic() - started, 3),
        )
        self.spool.discard(batch)
        return result.record_id

    def _pseudonym(self, client: Client, patient_id: str) -> PatientLink:
        """File an unlinked PatientID under a new pseudonymous patient of the institution
        (enrolled on chain by the gateway; no one keeps its key). Linking the MRN later
        merges its records into the real patient (``medledger patient link``)."""
        pseudonym = PrivateKey.generate().id
        client.submit(PSEUDONYM_ENROLL, PseudonymBody(id=pseudonym))
        link = self.patients.add_pseudonym(
            patient_id, pseudonym, added_by=self.gateway_id, now_ms=int(time.time() * 1000)
        )
        log.info("dicom.pseudonym_enrolled", pseudonym=link.patient, gateway=self.gateway_id)
        return link

    def _first_record(self, client: Client, study_uid: str, patient: str) -> str:
        """The live record this study was first stored as, for the same patient, if any:
        instances that come after a seal are stored as a part of it (``part_of``)."""
        seen: set[str] = set()
        for entry in self.index.instances(study_uid):
            if entry.record_id in seen:
                continue
            seen.add(entry.record_id)
            try:
                meta = client.record(entry.record_id)
            except MedLedgerError:
                continue
            if meta["patient"] == patient and not meta["part_of"] and not meta["erased_height"]:
                return entry.record_id
        return ""

    def _index_batch(
        self, batch: Batch, files: list[tuple[str, Path, int]], record_id: str, patient: str
    ) -> None:
        """Enter the sealed study's instances in the index (from the spooled files)."""
        try:
            entries: list[IndexedInstance] = []
            for member, path, size in files:
                with open(path, "rb") as fh:
                    entry = read_instance(
                        fh, record_id=record_id, patient=patient, member=member, size=size
                    )
                if entry is not None:
                    entries.append(entry)
            self.index.add(entries)
        except Exception as exc:  # the record is stored; only queries miss it
            log.error(
                "dicom.index_failed",
                study_uid=batch.study_uid,
                record_id=record_id,
                error=type(exc).__name__,
            )

    # ---- C-FIND, C-MOVE, C-GET (association threads): the SCP's QueryService ----------

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the node's event loop (committed state lives there), briefly."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise Unavailable("the node is stopping", code="NODE_STOPPING")

        async def call() -> T:
            return fn()

        try:
            future = asyncio.run_coroutine_threadsafe(call(), loop)
        except RuntimeError:
            raise Unavailable("the node is stopping", code="NODE_STOPPING")
        try:
            return future.result(LOOKUP_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise Unavailable("the node is busy", code="NODE_BUSY")

    def visible_records(self, identity_id: str, level: str, match: Mapping[str, str]) -> set[str]:
        """The records that may match the query and ``identity_id`` may see (none if
        it is unknown)."""
        indexed = self.index.candidate_record_ids(level, match)
        visibility = self.visibility
        if visibility is None:
            raise Unavailable("the node's API is not up yet", code="NODE_STARTING")

        def decide_now() -> set[str]:
            ident = self._lookup(identity_id)
            return set() if ident is None else visibility(ident, indexed)

        return self._on_loop(decide_now)

    def find(self, verdict: Verdict, level: str, match: Mapping[str, str]) -> list[dict[str, str]]:
        visible = self.visible_records(verdict.identity, level, match)
        return self.index.search(level, match, record_ids=visible, limit=MAX_FIND_MATCHES + 1)

    def plan(self, verdict: Verdict, level: str, match: Mapping[str, str]) -> list[IndexedInstance]:
        """The visible instances matching the query, grouped by record (first seen)."""
        visible = self.visible_records(verdict.identity, level, match)
        rows = self.index.search(level, match, record_ids=visible, limit=MAX_RETRIEVE_INSTANCES + 1)
        seen: set[str] = set()
        planned: list[IndexedInstance] = []
        for row in rows:
            for inst in self.index.instances(
                row["StudyInstanceUID"],
                row.get("SeriesInstanceUID") if level in ("SERIES", "IMAGE") else None,
                row.get("SOPInstanceUID") if level == "IMAGE" else None,
            ):
                if inst.record_id in visible and inst.sop_uid not in seen:
                    seen.add(inst.sop_uid)
                    planned.append(inst)
            if len(planned) > MAX_RETRIEVE_INSTANCES:
                break
        order = {rid: n for n, rid in enumerate(dict.fromkeys(i.record_id for i in planned))}
        return sorted(planned, key=lambda i: order[i.record_id])

    def fetch(self, verdict: Verdict, record_id: str) -> dict[str, bytes]:
        from medledger.dicom.retrieve import read_study

        return read_study(
            self.api_url,
            self.gateway_key,
            record_id,
            purpose=RETRIEVE_PURPOSE,
            on_behalf_of=verdict.identity,
        )

    def destination(self, ae_title: str) -> tuple[str, int] | None:
        """A C-MOVE destination: an allowed AE title with an address whose identity is
        an active service of this institution now."""
        entry = self.allowlist.get(ae_title)
        if entry is None or not entry.host:
            return None
        identity = self._on_loop(lambda: self._lookup(entry.identity))
        if not decide(entry, identity, self.institution).accepted:
            return None
        return entry.host, entry.port

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

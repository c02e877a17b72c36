"""The DICOM association acceptor (SCP) of a node, on pynetdicom.

:class:`DicomSCP` listens on one address under one AE title and serves the
Verification service (C-ECHO) and, given a ``store`` callable, the Storage service
(C-STORE, pynetdicom's storage SOP classes in any transfer syntax it knows). Each
received instance is checked here (size cap, StudyInstanceUID and SOPInstanceUID
valid UIDs, a PatientID) and handed, encoded as a DICOM Part 10 file exactly as
received, to ``store``; Success is answered only once ``store`` returned (the
gateway's spool has fsynced it). Given a ``query`` service (:class:`QueryService`, the
gateway), it also answers C-FIND and serves C-MOVE and C-GET (Patient Root and Study
Root Query/Retrieve), sending each instance exactly as stored. It decides nothing
about callers itself: every
association request is put to an ``authorize`` callable before negotiation, and
refused with A-ASSOCIATE-RJ unless it answers :class:`Verdict` ``accepted``.
Refusals fail closed: an authorizer that raises refuses the association too.

pynetdicom runs the server in a thread and each association in a thread of its
own; the handlers below run in those threads.
"""

from __future__ import annotations

import logging
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import (
    PresentationContext,
    StoragePresentationContexts,
    VerificationPresentationContexts,
)
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.transport import ThreadedAssociationServer

from medledger.dicom.index import IndexedInstance
from medledger.dicom.uids import is_uid, patient_id_problem, string_value
from medledger.errors import MedLedgerError, NodeError
from medledger.log import get_logger

log = get_logger("medledger.dicom")

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, diagnostic
REJECT_PERMANENT = 0x01
REJECT_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_PROVIDER_PRESENTATION = 0x03
DIAG_NO_REASON = 0x01
DIAG_CALLING_AE_NOT_RECOGNISED = 0x03
DIAG_CALLED_AE_NOT_RECOGNISED = 0x07
DIAG_TEMPORARY_CONGESTION = 0x01

STATUS_SUCCESS = 0x0000
STATUS_REFUSED = 0x0122  # C-ECHO outside an association this node authorised (never expected)
# C-STORE failures (PS3.4 Annex B.2.3)
STATUS_OUT_OF_RESOURCES = 0xA700  # over the size cap, or the spool cannot write
STATUS_DATASET_MISMATCH = 0xA900  # no or invalid Study/SOP Instance UID, no PatientID, ...
STATUS_CANNOT_UNDERSTAND = 0xC000  # the dataset does not decode

# C-FIND, C-MOVE, C-GET (PS3.4 C.4): statuses this SCP answers itself
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_QR_IDENTIFIER_MISMATCH = 0xA900  # no/unsupported QueryRetrieveLevel, bad key values
STATUS_QR_UNABLE = 0xC000  # undecodable identifier, or the read was refused (see comment)
STATUS_MOVE_DESTINATION_UNKNOWN = 0xA801

MAX_FIND_MATCHES = 1000  # a C-FIND answers at most this many (then logs dicom.find_capped)
MAX_RETRIEVE_INSTANCES = 65535  # a C-MOVE/C-GET moves at most this many (DIMSE counter)
MAX_MOVE_CONTEXTS = 128  # presentation contexts proposed to a move destination

DEFAULT_MAX_INSTANCE_BYTES = 512 * 1024 * 1024

MAX_ASSOCIATIONS = 16
MAX_PDU_BYTES = 1024 * 1024
ACSE_TIMEOUT_S = 30.0  # waiting for A-ASSOCIATE-RQ, A-RELEASE-RP
DIMSE_TIMEOUT_S = 30.0  # waiting for a DIMSE message
NETWORK_TIMEOUT_S = 60.0  # an idle association is aborted after this


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of an association request.

    ``reason`` is a short code for the log (``allowed``, ``unknown_calling_ae``,
    ``identity_suspended``, ...). A refusal is permanent (the caller is not
    recognised) unless ``transient`` (this node could not decide now: retry later).
    """

    accepted: bool
    reason: str
    identity: str = ""
    transient: bool = False


Authorizer = Callable[[str], Verdict]


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """One C-STORE request that passed the SCP's checks."""

    study_uid: str
    sop_uid: str
    patient_id: str
    data: bytes  # a DICOM Part 10 file: preamble, file meta, the dataset as received
    association: int  # an ID of the association, for :data:`ClosedHandler`


class Refused(MedLedgerError):
    """``store`` refuses an instance: answered with ``status``, nothing kept."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message, code=code)
        self.status = status


StoreHandler = Callable[[Verdict, str, ReceivedInstance], None]
ClosedHandler = Callable[[int], None]


class QueryService(Protocol):
    """What the SCP needs for C-FIND, C-MOVE and C-GET (the gateway provides it).

    Each method runs in an association thread and raises
    :class:`~medledger.errors.MedLedgerError` on failure.
    """

    def find(self, verdict: Verdict, level: str, match: Mapping[str, str]) -> list[dict[str, str]]:
        """Entities at ``level`` matching ``match`` that ``verdict.identity`` may see."""
        ...

    def plan(self, verdict: Verdict, level: str, match: Mapping[str, str]) -> list[IndexedInstance]:
        """The instances a C-MOVE/C-GET of ``match`` at ``level`` would send."""
        ...

    def fetch(self, verdict: Verdict, record_id: str) -> dict[str, bytes]:
        """Read one record (a committed access event): SOP Instance UID -> Part 10 bytes."""
        ...

    def destination(self, ae_title: str) -> tuple[str, int] | None:
        """The address of a C-MOVE destination this node may send to, or None."""
        ...


_FIND_MODELS = {
    str(PatientRootQueryRetrieveInformationModelFind): "PATIENT_ROOT",
    str(StudyRootQueryRetrieveInformationModelFind): "STUDY_ROOT",
}
_RETRIEVE_MODELS = (
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)
_PATIENT_ROOT = frozenset(
    {
        str(PatientRootQueryRetrieveInformationModelFind),
        str(PatientRootQueryRetrieveInformationModelMove),
        str(PatientRootQueryRetrieveInformationModelGet),
    }
)


class BadIdentifier(Exception):
    """A query's identifier this SCP refuses (answered with ``status``)."""

    def __init__(self, reason: str, status: int = STATUS_QR_IDENTIFIER_MISMATCH) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def parse_identifier(identifier: Dataset, sop_class: str) -> tuple[str, dict[str, str]]:
    """``(level, {keyword: value})`` of a C-FIND/C-MOVE/C-GET identifier.

    Values are text: multiple values joined by ``\\``, names as written. Sequences and
    private or unknown elements are not matched (a C-FIND returns them empty).
    """
    try:
        level = string_value(identifier.get("QueryRetrieveLevel")).upper()
        match: dict[str, str] = {}
        for elem in identifier:
            keyword = elem.keyword
            if not keyword or elem.VR == "SQ" or keyword == "QueryRetrieveLevel":
                continue
            if keyword == "SpecificCharacterSet":
                continue
            match[keyword] = _querystring_value(elem.value)
    except BadIdentifier:
        raise
    except Exception:
        raise BadIdentifier("undecodable", STATUS_QR_UNABLE)
    allowed: tuple[str, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")
    if sop_class not in _PATIENT_ROOT:
        allowed = allowed[1:]
    if level not in allowed:
        raise BadIdentifier("unsupported_level")
    return level, match


def _querystring_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(_querystring_value(v) for v in value)
    if isinstance(value, bytes):
        raise BadIdentifier("binary_value")
    return str(value).strip("\x00 ")


def find_response(identifier: Dataset, row: Mapping[str, str], ae_title: str) -> Dataset:
    """The C-FIND pending identifier for one match: the requested keys, filled in."""
    rsp = Dataset()
    non_ascii = False
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword == "SpecificCharacterSet":
            continue
        if elem.VR == "SQ":
            rsp.add_new(elem.tag, "SQ", [])
            continue
        if keyword == "QueryRetrieveLevel":
            rsp.QueryRetrieveLevel = elem.value
            continue
        text = ae_title if keyword == "RetrieveAETitle" else row.get(keyword, "")
        non_ascii = non_ascii or not text.isascii()
        rsp.add_new(elem.tag, elem.VR, _element_value(keyword, elem.VR, text))
    if non_ascii:
        rsp.SpecificCharacterSet = "ISO_IR 192"
    return rsp


def _element_value(keyword: str, vr: str, text: str) -> Any:
    if not text:
        return None
    if vr in ("US", "UL", "SS", "SL"):
        try:
            return int(text)
        except ValueError:
            return None
    if "\\" in text:
        return text.split("\\")
    return text


def _reject_params(verdict: Verdict) -> tuple[int, int, int]:
    if verdict.transient:
        return REJECT_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, DIAG_TEMPORARY_CONGESTION
    return REJECT_PERMANENT, SOURCE_SERVICE_USER, DIAG_CALLING_AE_NOT_RECOGNISED


class _ToStructlog(logging.Handler):
    """pynetdicom's own warnings and errors, as JSON log lines like the node's."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log.warning("dicom.library", level_name=record.levelname, message=record.getMessage())
        except Exception:  # pragma: no cover - logging must not break an association
            pass


_library_handler = _ToStructlog(level=logging.WARNING)


def _route_library_logs() -> None:
    lib = logging.getLogger("pynetdicom")
    if _library_handler not in lib.handlers:
        lib.addHandler(_library_handler)
    # pydicom warns (and logs) about invalid values of received datasets, quoting them:
    # patient data, kept out of the node's output (the refusal is logged by reason)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


class DicomSCP:
    """A Verification SCP on ``host:port`` answering as ``ae_title``."""

    def __init__(
        self,
        host: str,
        port: int,
        ae_title: str,
        authorize: Authorizer,
        *,
        store: StoreHandler | None = None,
        query: QueryService | None = None,
        on_closed: ClosedHandler | None = None,
        max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.ae_title = ae_title
        self._authorize = authorize
        self._store = store
        self._query = query
        self._on_closed_cb = on_closed
        self.max_instance_bytes = max_instance_bytes
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()
        # the verdict of each association this SCP accepted, for its DIMSE handlers
        self._accepted: weakref.WeakKeyDictionary[Association, Verdict] = (
            weakref.WeakKeyDictionary()
        )
        ae = AE(ae_title=ae_title)
        # the largest P-DATA PDU we accept: a peer then sends a small instance in one
        # PDU instead of several of pynetdicom's default 16 KiB (fewer network-loop turns)
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.supported_contexts = VerificationPresentationContexts
        if store is not None or query is not None:
            for cx in StoragePresentationContexts:
                assert cx.abstract_syntax is not None
                # roles: a C-GET requestor proposes to be the storage SCP, and this
                # node then sends the instances on the same association
                ae.add_supported_context(
                    cx.abstract_syntax,
                    ALL_TRANSFER_SYNTAXES,
                    scu_role=store is not None,
                    scp_role=query is not None,
                )
        if query is not None:
            for model in list(_FIND_MODELS) + [str(m) for m in _RETRIEVE_MODELS]:
                ae.add_supported_context(model)
        ae.require_called_aet = True  # checked below too; this is pynetdicom's own guard
        ae.maximum_associations = MAX_ASSOCIATIONS
        ae.acse_timeout = ACSE_TIMEOUT_S
        ae.dimse_timeout = DIMSE_TIMEOUT_S
        ae.network_timeout = NETWORK_TIMEOUT_S
        self._ae = ae

    @property
    def bound_port(self) -> int:
        if self._server is None:
            return self.port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in background threads (``DICOM_LISTEN_FAILED`` if it cannot bind)."""
        _route_library_logs()
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
        ]
        try:
            server = self._ae.start_server(
                (self.host, self.port), block=False, evt_handlers=handlers
            )
        except (OSError, ValueError) as exc:
            raise NodeError(
                f"the DICOM listener cannot listen on {self.host}:{self.port}: {exc}",
                code="DICOM_LISTEN_FAILED",
            )
        assert server is not None
        server.handle_error = self._on_connection_error  # type: ignore[method-assign]
        self._server = server
        log.info("dicom.listening", host=self.host, port=self.bound_port, ae_title=self.ae_title)

    def stop(self) -> None:
        """Abort open associations and close the listener. Blocks up to about a second."""
        if self._server is None:
            return
        self._server = None
        self._ae.shutdown()
        log.info("dicom.stopped", ae_title=self.ae_title)

    # ---- handlers (association threads) -------------------------------------------------

    @staticmethod
    def _peer(assoc: Association) -> str:
        return f"{assoc.requestor.address}:{assoc.requestor.port}"

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = str(getattr(rq, "calling_ae_title", "") or "").strip(" ")
        called = str(getattr(rq, "called_ae_title", "") or "").strip(" ")
        if called != self.ae_title:
            verdict = Verdict(False, "called_ae_mismatch")
            params = (REJECT_PERMANENT, SOURCE_SERVICE_USER, DIAG_CALLED_AE_NOT_RECOGNISED)
        else:
            try:
                verdict = self._authorize(calling)
            except Exception:
                log.exception("dicom.authorize_failed", calling_ae=calling)
                verdict = Verdict(False, "authorize_failed", transient=True)
            params = _reject_params(verdict)
        if verdict.accepted:
            with self._lock:
                self._accepted[assoc] = verdict
            return
        log.warning(
            "dicom.association_rejected",
            calling_ae=calling,
            called_ae=called,
            peer=self._peer(assoc),
            reason=verdict.reason,
            identity=verdict.identity or None,
        )
        # pynetdicom skips negotiation for an association rejected here
        assoc.acse.send_reject(*params)
        assoc.kill()

    def _verdict(self, assoc: Association) -> Verdict | None:
        with self._lock:
            return self._accepted.get(assoc)

    def _on_accepted(self, event: evt.Event) -> None:
        verdict = self._verdict(event.assoc)
        log.info(
            "dicom.association_accepted",
            calling_ae=event.assoc.requestor.ae_title.strip(" "),
            identity=verdict.identity if verdict else None,
            peer=self._peer(event.assoc),
        )

    def _on_rejected(self, event: evt.Event) -> None:
        """pynetdicom's own refusals, after ours passed (too many associations, ...)."""
        rj = event.assoc.acceptor.primitive
        log.warning(
            "dicom.association_rejected",
            calling_ae=event.assoc.requestor.ae_title.strip(" "),
            peer=self._peer(event.assoc),
            reason="acceptor_limit",
            diagnostic=getattr(rj, "diagnostic", None),
        )

    def _on_aborted(self, event: evt.Event) -> None:
        log.info(
            "dicom.association_aborted",
            calling_ae=event.assoc.requestor.ae_title.strip(" "),
            peer=self._peer(event.assoc),
        )

    def _on_echo(self, event: evt.Event) -> int:
        verdict = self._verdict(event.assoc)
        calling = event.assoc.requestor.ae_title.strip(" ")
        if verdict is None:  # cannot happen: every association passed _on_requested
            log.error("dicom.unauthorised_request", calling_ae=calling, service="C-ECHO")
            return STATUS_REFUSED
        log.info("dicom.echo", calling_ae=calling, identity=verdict.identity)
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        assoc = event.assoc
        verdict = self._verdict(assoc)
        calling = assoc.requestor.ae_title.strip(" ")
        if verdict is None or self._store is None:  # cannot happen (see _on_echo)
            log.error("dicom.unauthorised_request", calling_ae=calling, service="C-STORE")
            return STATUS_REFUSED
        req = event.request
        sop_uid = str(getattr(req, "AffectedSOPInstanceUID", "") or "")

        def refuse(status: int, reason: str, **kw: Any) -> int:
            log.warning(
                "dicom.store_refused",
                calling_ae=calling,
                identity=verdict.identity,
                reason=reason,
                status=f"0x{status:04X}",
                sop_uid=sop_uid if is_uid(sop_uid) else None,
                **kw,
            )
            return status

        raw = getattr(req, "DataSet", None)
        size = len(raw.getbuffer()) if raw is not None else 0
        if size > self.max_instance_bytes:
            return refuse(STATUS_OUT_OF_RESOURCES, "too_large", size=size)
        try:
            ds = event.dataset
            study_uid = string_value(ds.get("StudyInstanceUID"))
            ds_sop_uid = string_value(ds.get("SOPInstanceUID"))
            patient_id = string_value(ds.get("PatientID"))
        except Exception:  # pydicom signals a malformed dataset with many types
            return refuse(STATUS_CANNOT_UNDERSTAND, "undecodable")
        if not study_uid:
            return refuse(STATUS_DATASET_MISMATCH, "no_study_uid")
        if not is_uid(study_uid):
            return refuse(STATUS_DATASET_MISMATCH, "bad_study_uid")
        if not is_uid(ds_sop_uid) or ds_sop_uid != sop_uid:
            return refuse(STATUS_DATASET_MISMATCH, "bad_sop_uid")
        if patient_id_problem(patient_id) is not None:
            return refuse(STATUS_DATASET_MISMATCH, "bad_patient_id", study_uid=study_uid)
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception:
            return refuse(STATUS_CANNOT_UNDERSTAND, "undecodable", study_uid=study_uid)
        instance = ReceivedInstance(
            study_uid=study_uid,
            sop_uid=sop_uid,
            patient_id=patient_id,
            data=data,
            association=id(assoc),
        )
        try:
            self._store(verdict, calling, instance)
        except Refused as exc:
            return refuse(exc.status, exc.code.lower(), study_uid=study_uid)
        except Exception:
            log.exception("dicom.spool_failed", calling_ae=calling, study_uid=study_uid)
            return STATUS_OUT_OF_RESOURCES
        log.info(
            "dicom.stored",
            calling_ae=calling,
            identity=verdict.identity,
            study_uid=study_uid,
            sop_uid=sop_uid,
            size=len(data),
        )
        return STATUS_SUCCESS

    # ---- C-FIND, C-MOVE, C-GET (association threads) ---------------------------------------

    def _qr_request(
        self, event: evt.Event, service: str
    ) -> tuple[Verdict, str, QueryService, str, dict[str, str]]:
        """The caller's verdict, calling AE, the query service, level and match keys
        (:class:`BadIdentifier` for an identifier this SCP refuses)."""
        assoc = event.assoc
        verdict = self._verdict(assoc)
        calling = assoc.requestor.ae_title.strip(" ")
        if verdict is None or self._query is None:  # cannot happen (see _on_echo)
            log.error("dicom.unauthorised_request", calling_ae=calling, service=service)
            raise BadIdentifier("unauthorised", STATUS_REFUSED)
        sop_class = str(getattr(event.request, "AffectedSOPClassUID", "") or "")
        try:
            identifier = event.identifier
        except Exception:
            raise BadIdentifier("undecodable", STATUS_QR_UNABLE)
        level, match = parse_identifier(identifier, sop_class)
        return verdict, calling, self._query, level, match

    def _refuse_query(self, event: evt.Event, service: str, exc: Exception, status: int) -> None:
        code = exc.reason if isinstance(exc, BadIdentifier) else getattr(exc, "code", "")
        log.warning(
            "dicom.query_refused",
            service=service,
            calling_ae=event.assoc.requestor.ae_title.strip(" "),
            reason=str(code).lower() or type(exc).__name__,
            status=f"0x{status:04X}",
        )

    def _on_find(self, event: evt.Event) -> Iterator[tuple[Any, Dataset | None]]:
        try:
            verdict, calling, query, level, match = self._qr_request(event, "C-FIND")
            rows = query.find(verdict, level, match)
        except BadIdentifier as exc:
            self._refuse_query(event, "C-FIND", exc, exc.status)
            yield _status(exc.status, exc.reason), None
            return
        except MedLedgerError as exc:
            status = STATUS_QR_IDENTIFIER_MISMATCH if exc.code == "BAD_QUERY" else STATUS_QR_UNABLE
            self._refuse_query(event, "C-FIND", exc, status)
            yield _status(status, exc.code), None
            return
        if len(rows) > MAX_FIND_MATCHES:
            log.warning(
                "dicom.find_capped", calling_ae=calling, query_level=level, cap=MAX_FIND_MATCHES
            )
            rows = rows[:MAX_FIND_MATCHES]
        log.info(
            "dicom.find",
            calling_ae=calling,
            identity=verdict.identity,
            query_level=level,
            keys=sorted(k for k, v in match.items() if v),  # which keys, never their values
            matches=len(rows),
        )
        identifier = event.identifier
        for row in rows:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, find_response(identifier, row, self.ae_title)

    def _retrieval(
        self, event: evt.Event, service: str
    ) -> tuple[Verdict, str, QueryService, list[IndexedInstance]]:
        verdict, calling, query, level, match = self._qr_request(event, service)
        planned = query.plan(verdict, level, match)
        if len(planned) > MAX_RETRIEVE_INSTANCES:
            raise BadIdentifier("too_many_instances", STATUS_QR_UNABLE)
        return verdict, calling, query, planned

    def _sub_operations(
        self,
        event: evt.Event,
        service: str,
        verdict: Verdict,
        calling: str,
        query: QueryService,
        planned: list[IndexedInstance],
        destination: str = "",
    ) -> Iterator[tuple[Any, Dataset | None]]:
        """Read each matched record once (an access event each) and yield its planned
        instances as datasets that encode back to the stored bytes."""
        by_record: dict[str, list[IndexedInstance]] = {}
        for inst in planned:
            by_record.setdefault(inst.record_id, []).append(inst)
        sent = 0
        for record_id, wanted in by_record.items():
            try:
                files = query.fetch(verdict, record_id)
            except MedLedgerError as exc:
                self._refuse_query(event, service, exc, STATUS_QR_UNABLE)
                yield _status(STATUS_QR_UNABLE, f"{exc.code}: record {record_id}"), None
                return
            for inst in wanted:
                if event.is_cancelled:
                    yield STATUS_CANCEL, None
                    return
                data = files.get(inst.sop_uid)
                if data is None:  # indexed but not in the record: a failed sub-operation
                    log.error("dicom.instance_missing", record_id=record_id, sop_uid=inst.sop_uid)
                    yield STATUS_PENDING, "missing"  # type: ignore[misc]
                    continue
                sent += 1
                yield STATUS_PENDING, _stored_dataset(data)
        log.info(
            "dicom.retrieved",
            service=service,
            calling_ae=calling,
            identity=verdict.identity,
            destination=destination or None,
            records=len(by_record),
            instances=sent,
        )

    def _on_move(self, event: evt.Event) -> Iterator[Any]:
        dest_ae = str(getattr(event, "move_destination", "") or "").strip(" ")
        try:
            verdict, calling, query, planned = self._retrieval(event, "C-MOVE")
            address = query.destination(dest_ae)
        except (BadIdentifier, MedLedgerError) as exc:
            # pynetdicom answers a handler that fails before the destination with a
            # failure status of its own (0xC514); our reason is in the log
            status = exc.status if isinstance(exc, BadIdentifier) else STATUS_QR_UNABLE
            self._refuse_query(event, "C-MOVE", exc, status)
            raise
        if address is None:
            log.warning(
                "dicom.move_refused",
                calling_ae=calling,
                identity=verdict.identity,
                destination=dest_ae,
                reason="unknown_destination",
                status=f"0x{STATUS_MOVE_DESTINATION_UNKNOWN:04X}",
            )
            yield None, None
            return
        contexts = move_contexts(planned)
        yield address[0], address[1], {"contexts": contexts}
        yield len(planned)
        yield from self._sub_operations(
            event, "C-MOVE", verdict, calling, query, planned, destination=dest_ae
        )

    def _on_get(self, event: evt.Event) -> Iterator[Any]:
        try:
            verdict, calling, query, planned = self._retrieval(event, "C-GET")
        except (BadIdentifier, MedLedgerError) as exc:
            status = exc.status if isinstance(exc, BadIdentifier) else STATUS_QR_UNABLE
            self._refuse_query(event, "C-GET", exc, status)
            raise
        yield len(planned)
        yield from self._sub_operations(event, "C-GET", verdict, calling, query, planned)

    def _on_conn_close(self, event: evt.Event) -> None:
        if self._on_closed_cb is not None:
            try:
                self._on_closed_cb(id(event.assoc))
            except Exception:  # pragma: no cover - a handler must not break the server
                log.exception("dicom.close_handler_failed")

    def _on_connection_error(self, request: Any, client_address: Any) -> None:
        log.exception("dicom.connection_error", peer=str(client_address))


def _status(status: int, comment: str) -> Dataset:
    """A status with an Error Comment (no patient data: codes and record IDs only)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


def _stored_dataset(part10: bytes) -> Dataset:
    """A Part 10 file as a dataset pynetdicom sends in the file's own transfer syntax.

    pydicom keeps the elements it did not need to decode as raw bytes and writes them
    back unchanged, so the encoded dataset equals the stored one byte for byte (a
    deflated transfer syntax is re-compressed, and may differ in its compressed bytes).
    """
    return pydicom.dcmread(BytesIO(part10))


def move_contexts(planned: list[IndexedInstance]) -> list[PresentationContext]:
    """The presentation contexts proposed to a move destination: each SOP class in the
    transfer syntax its instances were stored in (nothing is converted)."""
    pairs = sorted({(i.sop_class_uid, i.transfer_syntax) for i in planned})
    by_class: dict[str, list[str]] = {}
    for sop_class, ts in pairs:
        by_class.setdefault(sop_class, []).append(ts)
    contexts: list[PresentationContext] = []
    for sop_class, syntaxes in by_class.items():
        for ts in syntaxes:
            if len(contexts) < MAX_MOVE_CONTEXTS:
                contexts.append(build_context(sop_class, [ts]))
    return contexts

"""The DICOM association acceptor (SCP) of a node, on pynetdicom.

:class:`DicomSCP` listens on one address under one AE title and serves the
Verification service (C-ECHO) and, given a ``store`` callable, the Storage service
(C-STORE, pynetdicom's storage SOP classes in any transfer syntax it knows). Each
received instance is checked here (size cap, StudyInstanceUID and SOPInstanceUID
valid UIDs, a PatientID) and handed, encoded as a DICOM Part 10 file exactly as
received, to ``store``; Success is answered only once ``store`` returned (the
gateway's spool has fsynced it). It decides nothing about callers itself: every
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.association import Association
from pynetdicom.presentation import StoragePresentationContexts, VerificationPresentationContexts
from pynetdicom.transport import ThreadedAssociationServer

from medledger.dicom.uids import is_uid, patient_id_problem
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

DEFAULT_MAX_INSTANCE_BYTES = 512 * 1024 * 1024

MAX_ASSOCIATIONS = 16
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
        on_closed: ClosedHandler | None = None,
        max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.ae_title = ae_title
        self._authorize = authorize
        self._store = store
        self._on_closed_cb = on_closed
        self.max_instance_bytes = max_instance_bytes
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()
        # the verdict of each association this SCP accepted, for its DIMSE handlers
        self._accepted: weakref.WeakKeyDictionary[Association, Verdict] = (
            weakref.WeakKeyDictionary()
        )
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = VerificationPresentationContexts
        if store is not None:
            for cx in StoragePresentationContexts:
                assert cx.abstract_syntax is not None
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
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
            study_uid = _text(ds.get("StudyInstanceUID"))
            ds_sop_uid = _text(ds.get("SOPInstanceUID"))
            patient_id = _text(ds.get("PatientID"))
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

    def _on_conn_close(self, event: evt.Event) -> None:
        if self._on_closed_cb is not None:
            try:
                self._on_closed_cb(id(event.assoc))
            except Exception:  # pragma: no cover - a handler must not break the server
                log.exception("dicom.close_handler_failed")

    def _on_connection_error(self, request: Any, client_address: Any) -> None:
        log.exception("dicom.connection_error", peer=str(client_address))


def _text(value: object) -> str:
    """A DICOM string value as text, padding removed ('' when absent or multi-valued)."""
    if value is None or not isinstance(value, str):
        return ""
    return value.strip("\x00 ")

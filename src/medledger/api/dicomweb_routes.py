"""DICOMweb under ``/dicom-web`` (PS3.18): QIDO-RS, WADO-RS and STOW-RS.

* **QIDO-RS** ``GET /studies``, ``/series``, ``/instances``, ``/studies/{s}/series``,
  ``/studies/{s}/instances``, ``/studies/{s}/series/{se}/instances``: the node's study
  index (:mod:`medledger.dicom.index`), only the records whose metadata the caller may
  see (:mod:`medledger.dicom.visibility`); ``application/dicom+json``, 204 if empty.
* **WADO-RS** ``GET /studies/{s}[/series/{se}[/instances/{i}]]`` (Part 10 files as
  stored, ``multipart/related; type="application/dicom"``), ``.../metadata``
  (DICOM JSON), ``.../instances/{i}/frames/{list}`` (the frames' bitstreams),
  ``.../instances/{i}[/frames/{n}]/rendered`` (PNG or JPEG). Every retrieval is a
  ``record.read`` committed on chain for the bearer token's identity (the node's
  gateway key signs it with the token as delegation; the chain's policy decides).
  A signed request cannot delegate: ``TOKEN_REQUIRED``.
* **STOW-RS** ``POST /studies[/{s}]``: Part 10 files in ``multipart/related;
  type="application/dicom"``, from an active ``service`` of this node's institution;
  each part is checked as a C-STORE is and spooled through the gateway, which seals
  the study into an ``imaging-study`` record after its quiet period.

Callers authenticate with a bearer token (``medledger token issue``) or a signed
request. Errors are the API's JSON errors (``{"error": {"code", "message"}}``).
"""

from __future__ import annotations

import asyncio
import itertools
import mmap
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydicom.dataset import Dataset

from medledger.app.model import PURPOSES, Role
from medledger.dicom import dicomjson, multipart, qido, render, stow
from medledger.dicom.index import IndexedInstance
from medledger.dicom.retrieve import read_study
from medledger.dicom.scp import (
    STATUS_OUT_OF_RESOURCES,
    ReceivedInstance,
    Refused,
    Verdict,
)
from medledger.dicom.uids import is_uid
from medledger.dicom.visibility import visible_record_ids
from medledger.errors import AuthError, Forbidden, InvalidInput, MedLedgerError, NotFound
from medledger.log import get_logger
from medledger.node.node import Node

log = get_logger("medledger.dicomweb")

PREFIX = "/dicom-web"
DICOM_JSON = "application/dicom+json"
DICOM = "application/dicom"
MAX_STOW_BYTES = 2 * 1024**3
STOW_CALLING_AE = "DICOMWEB"
DEFAULT_PURPOSE = "treatment"
_ASSOCIATIONS = itertools.count(1)  # STOW requests, as negative "associations" of the spool


class PayloadTooLarge(MedLedgerError):
    http_status = 413
    default_code = "STOW_TOO_LARGE"


class UnsupportedMediaType(MedLedgerError):
    http_status = 415
    default_code = "UNSUPPORTED_MEDIA_TYPE"


def dicom_json(doc: Any, status: int = 200) -> Response:
    # pydicom hands str subclasses (UID, PersonName parts): encoded as plain strings
    body = msgspec.json.encode(doc, enc_hook=str)
    return Response(content=body, media_type=DICOM_JSON, status_code=status)


def check_uid(value: str, what: str) -> str:
    if not is_uid(value):
        raise InvalidInput(f"the {what} in the path is not a DICOM UID", code="BAD_UID")
    return value


def parse_purpose(request: Request) -> str:
    purpose = request.query_params.get("purpose", DEFAULT_PURPOSE)
    if purpose not in PURPOSES:
        raise InvalidInput(f"purpose is one of {', '.join(sorted(PURPOSES))}", code="BAD_PURPOSE")
    return purpose


# ---- Accept ------------------------------------------------------------------------------


def _accepts(request: Request) -> list[multipart.MediaType]:
    value = request.headers.get("accept", "").strip()
    return multipart.parse_accept(value) if value else []


def _not_acceptable(what: str) -> render.NotAcceptable:
    return render.NotAcceptable(f"this resource is available as {what}", code="NOT_ACCEPTABLE")


def accept_instances(request: Request, transfer_syntaxes: set[str]) -> None:
    """Part 10 files as stored: ``multipart/related; type="application/dicom"`` with no
    transfer-syntax, ``*`` or the one they are stored in (they are never transcoded)."""
    accepts = _accepts(request)
    if not accepts:
        return
    for m in accepts:
        if m.type == "*/*":
            return
        if m.type == "multipart/related" and m.params.get("type", DICOM) in (DICOM, "*/*"):
            ts = m.params.get("transfer-syntax", "*")
            if ts == "*" or {ts} == transfer_syntaxes:
                return
    raise _not_acceptable(
        'multipart/related; type="application/dicom" in the transfer syntax it was stored in'
    )


def accept_json(request: Request) -> None:
    for m in _accepts(request) or [multipart.MediaType(DICOM_JSON, {})]:
        if m.type in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return
    raise _not_acceptable(DICOM_JSON)


def accept_frames(request: Request, media_type: str) -> None:
    accepts = _accepts(request)
    if not accepts:
        return
    for m in accepts:
        if m.type == "*/*":
            return
        if m.type == "multipart/related":
            want = m.params.get("type", render.NATIVE_MEDIA)
            if want in (media_type, "*/*", "*") or (
                want.endswith("/*") and media_type.startswith(want[:-1])
            ):
                return
    raise _not_acceptable(f'multipart/related; type="{media_type}"')


def accept_image(request: Request) -> str:
    """The rendered media type: image/png (default) or image/jpeg, per Accept."""
    accepts = _accepts(request)
    if not accepts:
        return "image/png"
    for m in accepts:
        if m.type in ("image/png", "image/jpeg"):
            return m.type
        if m.type in ("image/*", "*/*"):
            return "image/png"
    raise _not_acceptable("image/png or image/jpeg")


# ---- the routes --------------------------------------------------------------------------


def add_dicomweb_routes(
    app: FastAPI, node: Node, authenticate: Callable[..., Awaitable[Any]]
) -> None:
    gateway = node.dicom

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/") + PREFIX

    # ---- QIDO-RS ------------------------------------------------------------------------

    async def search(request: Request, level: str, fixed: dict[str, str]) -> Response:
        caller = await authenticate(request)
        for key, uid in fixed.items():
            check_uid(uid, key)
        query = qido.parse(request.query_params.multi_items(), fixed)
        if query.nothing:
            return Response(status_code=204)
        index = gateway.index
        candidates = await asyncio.to_thread(index.candidate_record_ids, level, query.match)
        visible = visible_record_ids(node, caller.identity, candidates)
        rows = await asyncio.to_thread(
            index.search,
            level,
            query.match,
            record_ids=visible,
            limit=query.limit,
            offset=query.offset,
        )
        log.info(
            "dicomweb.qido",
            level=level,
            identity=caller.identity.id,
            keys=sorted(query.match),
            results=len(rows),
        )
        if not rows:
            return Response(status_code=204)
        base = base_url(request)
        return dicom_json([dicomjson.row_json(row, _row_url(base, level, row)) for row in rows])

    @app.get(PREFIX + "/studies")
    async def qido_studies(request: Request) -> Response:
        return await search(request, "STUDY", {})

    @app.get(PREFIX + "/series")
    async def qido_series(request: Request) -> Response:
        return await search(request, "SERIES", {})

    @app.get(PREFIX + "/instances")
    async def qido_instances(request: Request) -> Response:
        return await search(request, "IMAGE", {})

    @app.get(PREFIX + "/studies/{study}/series")
    async def qido_study_series(study: str, request: Request) -> Response:
        return await search(request, "SERIES", {"StudyInstanceUID": study})

    @app.get(PREFIX + "/studies/{study}/instances")
    async def qido_study_instances(study: str, request: Request) -> Response:
        return await search(request, "IMAGE", {"StudyInstanceUID": study})

    @app.get(PREFIX + "/studies/{study}/series/{series}/instances")
    async def qido_series_instances(study: str, series: str, request: Request) -> Response:
        return await search(
            request, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        )

    # ---- WADO-RS ------------------------------------------------------------------------

    async def retrieve(
        request: Request, study: str, series: str | None = None, sop: str | None = None
    ) -> list[tuple[IndexedInstance, bytes]]:
        """The stored Part 10 files of a study, series or instance, each read as a
        committed ``record.read`` of the token's identity."""
        caller = await authenticate(request)
        token: bytes = getattr(caller, "token", b"")
        if not token:
            raise AuthError(
                "WADO-RS reads for a bearer token's identity (medledger token issue); "
                "a signed request cannot delegate",
                code="TOKEN_REQUIRED",
            )
        check_uid(study, "study")
        if series is not None:
            check_uid(series, "series")
        if sop is not None:
            check_uid(sop, "instance")
        purpose = parse_purpose(request)
        wanted = gateway.index.instances(study, series, sop)
        if not wanted:
            what = "instance" if sop else "series" if series else "study"
            raise NotFound(f"no such {what} in this node's index", code=f"{what.upper()}_NOT_FOUND")
        files: dict[str, bytes] = {}
        for record_id in dict.fromkeys(i.record_id for i in wanted):
            files.update(
                await asyncio.to_thread(
                    read_study,
                    gateway.api_url,
                    gateway.gateway_key,
                    record_id,
                    purpose=purpose,
                    delegation=token,
                )
            )
        found = [(i, files[i.sop_uid]) for i in wanted if i.sop_uid in files]
        log.info(
            "dicomweb.wado",
            identity=caller.identity.id,
            study_uid=study,
            records=len({i.record_id for i in wanted}),
            instances=len(found),
        )
        if not found:
            raise NotFound("the study's record holds no such instance", code="INSTANCE_NOT_FOUND")
        return found

    def instances_response(
        request: Request, found: list[tuple[IndexedInstance, bytes]]
    ) -> Response:
        accept_instances(request, {i.transfer_syntax for i, _ in found})
        boundary = multipart.new_boundary()
        body = b"".join(multipart.build(((DICOM, data) for _, data in found), boundary))
        return Response(content=body, media_type=multipart.content_type(DICOM, boundary))

    def metadata_response(request: Request, found: list[tuple[IndexedInstance, bytes]]) -> Response:
        base = base_url(request)
        docs = []
        for inst, data in found:
            url = (
                f"{base}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/{inst.sop_uid}"
            )
            ds = render.read(data)
            frames = ",".join(str(n + 1) for n in range(render.number_of_frames(ds)))
            docs.append(dicomjson.metadata_json(ds, f"{url}/frames/{frames}"))
        return dicom_json(docs)

    @app.get(PREFIX + "/studies/{study}")
    async def wado_study(study: str, request: Request) -> Response:
        accept_instances_early(request)
        return instances_response(request, await retrieve(request, study))

    @app.get(PREFIX + "/studies/{study}/series/{series}")
    async def wado_series(study: str, series: str, request: Request) -> Response:
        accept_instances_early(request)
        return instances_response(request, await retrieve(request, study, series))

    @app.get(PREFIX + "/studies/{study}/series/{series}/instances/{sop}")
    async def wado_instance(study: str, series: str, sop: str, request: Request) -> Response:
        accept_instances_early(request)
        return instances_response(request, await retrieve(request, study, series, sop))

    def accept_instances_early(request: Request) -> None:
        """Refuse an unacceptable Accept before the read is committed on chain."""
        accept_instances(request, set())  # any transfer syntax: checked again after

    @app.get(PREFIX + "/studies/{study}/metadata")
    async def metadata_study(study: str, request: Request) -> Response:
        accept_json(request)
        return metadata_response(request, await retrieve(request, study))

    @app.get(PREFIX + "/studies/{study}/series/{series}/metadata")
    async def metadata_series(study: str, series: str, request: Request) -> Response:
        accept_json(request)
        return metadata_response(request, await retrieve(request, study, series))

    @app.get(PREFIX + "/studies/{study}/series/{series}/instances/{sop}/metadata")
    async def metadata_instance(study: str, series: str, sop: str, request: Request) -> Response:
        accept_json(request)
        return metadata_response(request, await retrieve(request, study, series, sop))

    @app.get(PREFIX + "/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}")
    async def wado_frames(
        study: str, series: str, sop: str, frame_list: str, request: Request
    ) -> Response:
        numbers = render.parse_frame_list(frame_list)
        ((_, data),) = await retrieve(request, study, series, sop)
        got = await asyncio.to_thread(render.frames, data, numbers)
        media = got[0].media_type
        accept_frames(request, media)
        boundary = multipart.new_boundary()
        body = b"".join(multipart.build(((f.media_type, f.data) for f in got), boundary))
        return Response(content=body, media_type=multipart.content_type(media, boundary))

    async def rendered(request: Request, study: str, series: str, sop: str, frame: int) -> Response:
        media = accept_image(request)
        ((_, data),) = await retrieve(request, study, series, sop)
        image = await asyncio.to_thread(render.render, data, frame, media)
        return Response(content=image, media_type=media)

    @app.get(PREFIX + "/studies/{study}/series/{series}/instances/{sop}/rendered")
    async def wado_rendered(study: str, series: str, sop: str, request: Request) -> Response:
        return await rendered(request, study, series, sop, 1)

    @app.get(PREFIX + "/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered")
    async def wado_frame_rendered(
        study: str, series: str, sop: str, frame: str, request: Request
    ) -> Response:
        (number,) = _one_frame(frame)
        return await rendered(request, study, series, sop, number)

    @app.get(PREFIX + "/studies/{study}/series/{series}/instances/{sop}/thumbnail")
    async def wado_thumbnail(study: str, series: str, sop: str, request: Request) -> Response:
        return await rendered(request, study, series, sop, 1)

    # ---- STOW-RS ------------------------------------------------------------------------

    @app.post(PREFIX + "/studies")
    async def stow_studies(request: Request) -> Response:
        return await store(request, None)

    @app.post(PREFIX + "/studies/{study}")
    async def stow_study(study: str, request: Request) -> Response:
        return await store(request, check_uid(study, "study"))

    async def store(request: Request, study: str | None) -> Response:
        caller = await authenticate(request)
        me = caller.identity
        if me.role != Role.SERVICE.value or me.institution != node.config.name:
            raise Forbidden(
                f"only a service identity of {node.config.name} may store studies here",
                code="ACCESS_DENIED",
            )
        media = multipart.parse_content_type(request.headers.get("content-type", ""))
        if media.type != "multipart/related" or media.params.get("type", DICOM) != DICOM:
            raise UnsupportedMediaType(
                'STOW-RS takes multipart/related; type="application/dicom"',
                code="UNSUPPORTED_MEDIA_TYPE",
            )
        boundary = multipart.boundary_of(media)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_STOW_BYTES):
            raise PayloadTooLarge(f"a STOW-RS body is at most {MAX_STOW_BYTES} bytes")
        with tempfile.TemporaryFile(dir=gateway.spool.open_dir.parent) as fh:
            size = 0
            async for piece in request.stream():
                size += len(piece)
                if size > MAX_STOW_BYTES:
                    raise PayloadTooLarge(f"a STOW-RS body is at most {MAX_STOW_BYTES} bytes")
                fh.write(piece)
            fh.flush()
            outcome = await asyncio.to_thread(
                _stow_file, gateway, fh.fileno(), size, boundary, study, me.id
            )
        stored, failed = outcome
        log.info(
            "dicomweb.stow",
            identity=me.id,
            study_uid=study,
            stored=len(stored),
            failed=len(failed),
            bytes=size,
        )
        status = 200 if not failed else 202 if stored else 409
        return dicom_json(_stow_json(base_url(request), stored, failed), status)


def _one_frame(text: str) -> list[int]:
    numbers = render.parse_frame_list(text)
    if len(numbers) != 1:
        raise InvalidInput("a rendered frame is one frame number", code="BAD_FRAME")
    return numbers


def _row_url(base: str, level: str, row: dict[str, str]) -> str:
    url = f"{base}/studies/{row.get('StudyInstanceUID', '')}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{row.get('SeriesInstanceUID', '')}"
    if level == "IMAGE":
        url += f"/instances/{row.get('SOPInstanceUID', '')}"
    return url


# ---- STOW-RS, in a worker thread -----------------------------------------------------------


def _stow_file(
    gateway: Any, fd: int, size: int, boundary: str, study: str | None, identity: str
) -> tuple[list[stow.Accepted], list[stow.Failed]]:
    """Parse the spooled body, check every part, then spool the accepted ones (all
    parsing first: a truncated body stores nothing)."""
    if size == 0:
        raise InvalidInput("the multipart body is empty", code="STOW_EMPTY")
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as buf:
        parts = multipart.split_parts(buf, size, boundary)
        if not parts:
            raise InvalidInput("the multipart body holds no part", code="STOW_EMPTY")
        checked: list[tuple[stow.Accepted | stow.Failed, bytes]] = []
        for part in parts:
            if part.size > gateway.max_instance_bytes:
                checked.append((stow.Failed(STATUS_OUT_OF_RESOURCES, "too_large"), b""))
                continue
            data = buf[part.start : part.end]
            verdict = stow.check_part(
                data,
                part.content_type,
                max_bytes=gateway.max_instance_bytes,
                study_uid=study,
            )
            checked.append((verdict, data))
    stored: list[stow.Accepted] = []
    failed: list[stow.Failed] = []
    association = -next(_ASSOCIATIONS)
    verdict_ok = Verdict(accepted=True, reason="stow", identity=identity)
    try:
        for outcome, data in checked:
            if isinstance(outcome, stow.Failed):
                failed.append(_refused(outcome))
                continue
            instance = ReceivedInstance(
                study_uid=outcome.study_uid,
                sop_uid=outcome.sop_uid,
                patient_id=outcome.patient_id,
                data=data,
                association=association,
            )
            try:
                gateway.store(verdict_ok, STOW_CALLING_AE, instance)
            except Refused as exc:
                failed.append(
                    _refused(
                        stow.Failed(
                            exc.status, exc.code.lower(), outcome.sop_uid, outcome.sop_class_uid
                        )
                    )
                )
                continue
            except Exception:
                log.exception("dicomweb.spool_failed", study_uid=outcome.study_uid)
                failed.append(
                    stow.Failed(
                        STATUS_OUT_OF_RESOURCES,
                        "spool_failed",
                        outcome.sop_uid,
                        outcome.sop_class_uid,
                    )
                )
                continue
            stored.append(outcome)
    finally:
        gateway.spool.association_closed(association)
    return stored, failed


def _refused(f: stow.Failed) -> stow.Failed:
    log.warning(
        "dicomweb.stow_refused",
        reason=f.reason,
        status=f"0x{f.status:04X}",
        sop_uid=f.sop_uid or None,
    )
    return f


def _stow_json(base: str, stored: Iterable[stow.Accepted], failed: Iterable[stow.Failed]) -> Any:
    """The STOW-RS response (PS3.18 10.5.3): ReferencedSOPSequence, FailedSOPSequence."""
    stored, failed = list(stored), list(failed)
    ds = Dataset()
    studies = {s.study_uid for s in stored}
    if len(studies) == 1:
        ds.RetrieveURL = f"{base}/studies/{next(iter(studies))}"
    if stored:
        items = []
        for s in stored:
            item = Dataset()
            item.ReferencedSOPClassUID = s.sop_class_uid
            item.ReferencedSOPInstanceUID = s.sop_uid
            item.RetrieveURL = (
                f"{base}/studies/{s.study_uid}/series/{s.series_uid}/instances/{s.sop_uid}"
            )
            items.append(item)
        ds.ReferencedSOPSequence = items
    if failed:
        items = []
        for f in failed:
            item = Dataset()
            item.ReferencedSOPClassUID = f.sop_class_uid or None
            item.ReferencedSOPInstanceUID = f.sop_uid or None
            item.FailureReason = f.status
            items.append(item)
        ds.FailedSOPSequence = items
    return ds.to_json_dict()

"""A Python client of the node API: signs requests and transactions, streams content.

Used by the CLI, the tests and the benchmarks. Record content is encrypted
here, on the client, before it leaves the machine. Its data key never leaves
the client whole: it is split into Shamir shares, one sealed to each custodian
institution's node key, any ``threshold`` of which rebuild it; a read gets
``threshold`` shares sealed to the reader and combines them in memory.
"""

from __future__ import annotations

import base64
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

import httpx
import msgspec

from medledger.api import signing
from medledger.app import delegation
from medledger.app.model import (
    ACTOR_IDENTITY,
    ACTOR_INSTITUTION,
    END_CARE,
    ENROLL,
    ERASE_APPROVE,
    ERASE_REQUEST,
    GRANT_CONSENT,
    PATIENT_MERGE,
    PROPOSE_MEMBER,
    READ_RECORD,
    REGISTER_RECORD,
    REVOKE_CONSENT,
    SET_PROXY,
    START_CARE,
    SUSPEND,
    VOTE_MEMBER,
    CareBody,
    EnrollBody,
    EraseApproveBody,
    EraseRequestBody,
    GrantConsentBody,
    MergeBody,
    ProposeMemberBody,
    ReadRecordBody,
    RegisterRecordBody,
    RevokeConsentBody,
    SetProxyBody,
    VoteMemberBody,
)
from medledger.app.storage import min_custody_threshold
from medledger.codec import decode, encode
from medledger.crypto.aead import new_data_key
from medledger.crypto.cid import cid_for
from medledger.crypto.keys import PrivateKey, PublicKey, is_identity_id, seal_to, unseal
from medledger.custody.shamir import KeyShare, combine_key, split_key
from medledger.errors import (
    IntegrityError,
    InvalidInput,
    MedLedgerError,
    Unavailable,
    from_wire,
)
from medledger.ledger.tx import make_tx
from medledger.storage import framing
from medledger.storage.crypt import ChunkDecryptor, build_content_manifest, encrypt_stream
from medledger.storage.manifest import DEFAULT_CHUNK_SIZE, ChunkRef, decode_manifest

Progress = Callable[[int], None]


REINDEX_TIMEOUT_S = 3600.0  # a reindex reads every study of the institution
NONCE_RETRIES = 8  # re-signs when another client of the same key took the nonce


@dataclass
class PutResult:
    record_id: str
    tx_hash: str
    height: int
    manifest_cid: str
    size: int
    chunk_count: int
    k: int = 1
    m: int = 0
    placement: list[str] = field(default_factory=list)
    stored_bytes: int = 0
    custodians: list[str] = field(default_factory=list)  # key-share holders, share x = i + 1
    threshold: int = 1  # shares that rebuild the key
    deidentified: bool = False


class Client:
    def __init__(self, node_url: str, key: PrivateKey, *, timeout: float = 60.0) -> None:
        self.node_url = node_url.rstrip("/")
        self.key = key
        self._http = httpx.Client(base_url=self.node_url, timeout=timeout)
        self._chain_id: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing -----------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | Iterator[bytes] | None = None,
        signed: bool = True,
        stream: bool = False,
        timeout: float | None = None,
    ) -> httpx.Response:
        path_qs = path + ("?" + urlencode(params) if params else "")
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        headers: dict[str, str] = {}
        body: bytes | Iterator[bytes] | None = content
        if json_body is not None:
            body = msgspec.json.encode(json_body)
            headers["content-type"] = "application/json"
        if signed:
            payload = (
                signing.UNSIGNED
                if body is not None and not isinstance(body, bytes)
                else signing.body_hash(body or b"")
            )
            headers.update(
                signing.sign_request(
                    self.key, method, path_qs, time.time_ns() // 1_000_000, payload
                )
            )
        try:
            if stream:
                req = self._http.build_request(method, path_qs, content=body, headers=headers)
                resp = self._http.send(req, stream=True)
            else:
                resp = self._http.request(method, path_qs, content=body, headers=headers, **extra)
        except httpx.TimeoutException:
            raise Unavailable(f"node {self.node_url} did not answer in time", code="NODE_TIMEOUT")
        except httpx.TransportError as exc:
            raise Unavailable(
                f"cannot reach node {self.node_url} ({type(exc).__name__})", code="NODE_UNREACHABLE"
            )
        if resp.status_code >= 400:
            if stream:
                resp.read()
                resp.close()
            raise _error_from(resp)
        return resp

    def get_json(self, path: str, *, signed: bool = True, **params: Any) -> Any:
        return self._request("GET", path, params=params or None, signed=signed).json()

    def post_json(self, path: str, *, params: dict[str, Any] | None = None) -> Any:
        """POST with an empty body (actions whose arguments are query parameters)."""
        return self._request("POST", path, params=params, content=b"").json()

    # ---- chain -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.get_json("/api/v1/status", signed=False)
        return doc

    @property
    def chain_id(self) -> str:
        if self._chain_id is None:
            self._chain_id = str(self.status()["chain_id"])
        return self._chain_id

    def next_nonce(self) -> int:
        return int(self.get_json(f"/api/v1/accounts/{self.key.id}/nonce")["next_nonce"])

    def build_tx(self, kind: str, body: Any, nonce: int | None = None) -> bytes:
        if nonce is None:
            nonce = self.next_nonce()
        return make_tx(self.key, chain_id=self.chain_id, nonce=nonce, kind=kind, body=body)

    def submit_raw(self, raw: bytes, *, wait: bool = True, timeout: float = 30.0) -> dict[str, Any]:
        resp = self._request(
            "POST",
            "/api/v1/tx",
            params={"wait": str(wait).lower(), "timeout": timeout},
            content=raw,
            signed=False,
        )
        doc: dict[str, Any] = resp.json()
        return doc

    def submit(
        self, kind: str, body: Any, *, allow_codes: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """Submit and wait for commit; raise the committed error code if it failed.

        Another client with the same key (the node's gateway, say, sealing a study
        while a C-MOVE reads) may take the nonce between fetching and submitting it:
        the transaction is then re-signed at the next nonce, a few times."""
        for attempt in range(NONCE_RETRIES):
            try:
                receipt = self.submit_raw(self.build_tx(kind, body))
                break
            except MedLedgerError as exc:
                if exc.code != "NONCE_REPLAY" or attempt == NONCE_RETRIES - 1:
                    raise
        if receipt.get("code") != "OK" and receipt.get("code") not in allow_codes:
            raise from_wire(
                403 if receipt.get("code") == "ACCESS_DENIED" else 400,
                str(receipt.get("code")),
                str(receipt.get("message")),
            )
        return receipt

    def submit_batch(
        self, raws: list[bytes], *, wait: bool = True, compact: bool = False
    ) -> list[dict[str, Any]]:
        resp = self._request(
            "POST",
            "/api/v1/txs",
            params={"wait": str(wait).lower(), "compact": str(compact).lower()},
            content=msgspec.msgpack.encode(raws),
            signed=False,
        )
        return list(resp.json()["results"])

    # ---- identities ---------------------------------------------------------------------------

    def enroll(self, identity_id: str, role: str) -> dict[str, Any]:
        return self.submit(ENROLL, EnrollBody(id=identity_id, role=role))

    def suspend(self, identity_id: str, reason: str) -> dict[str, Any]:
        return self.submit(SUSPEND, _suspend_body(identity_id, reason))

    def propose_member(
        self,
        action: str,
        institution: str,
        *,
        validator_public_key: bytes = b"",
        admin_public_key: bytes = b"",
        power: int = 0,
    ) -> dict[str, Any]:
        return self.submit(
            PROPOSE_MEMBER,
            ProposeMemberBody(
                action=action,
                institution=institution,
                validator_public_key=validator_public_key,
                admin_public_key=admin_public_key,
                power=power,
            ),
        )

    def vote_member(self, proposal_id: str, approve: bool) -> dict[str, Any]:
        return self.submit(VOTE_MEMBER, VoteMemberBody(proposal_id=proposal_id, approve=approve))

    def identity(self, identity_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.get_json(f"/api/v1/identities/{identity_id}")
        return doc

    # ---- consent, care, proxies, erasure -------------------------------------------------------

    def grant_consent(
        self,
        actor: str,
        purposes: list[str],
        *,
        patient: str | None = None,
        record_ids: list[str] | None = None,
        types: list[str] | None = None,
        start_ms: int = 0,
        end_ms: int = 0,
        permit: bool = True,
    ) -> dict[str, Any]:
        """Grant (or, with ``permit=False``, deny) ``actor`` (an identity ID or an
        institution name) access to ``patient``'s records (default: the caller's own)."""
        body = GrantConsentBody(
            patient=patient or self.key.id,
            actor_kind=ACTOR_IDENTITY if is_identity_id(actor) else ACTOR_INSTITUTION,
            actor=actor,
            purposes=sorted(set(purposes)),
            record_ids=sorted(set(record_ids or [])),
            types=sorted(set(types or [])),
            start_ms=start_ms,
            end_ms=end_ms,
            permit=permit,
        )
        return self.submit(GRANT_CONSENT, body)

    def revoke_consent(self, consent_id: str) -> dict[str, Any]:
        return self.submit(REVOKE_CONSENT, RevokeConsentBody(consent_id=consent_id))

    def consents(self, patient: str) -> list[dict[str, Any]]:
        return list(self.get_json("/api/v1/consents", patient=patient)["consents"])

    def start_care(self, patient: str, clinician: str, kind: str = "admission") -> dict[str, Any]:
        return self.submit(START_CARE, CareBody(patient=patient, clinician=clinician, kind=kind))

    def end_care(self, patient: str, clinician: str) -> dict[str, Any]:
        return self.submit(END_CARE, CareBody(patient=patient, clinician=clinician, kind=""))

    def care(self, patient: str) -> list[dict[str, Any]]:
        return list(self.get_json("/api/v1/care", patient=patient)["relationships"])

    def set_proxy(self, proxy: str, active: bool = True) -> dict[str, Any]:
        return self.submit(SET_PROXY, SetProxyBody(proxy=proxy, active=active))

    def request_erasure(self, record_id: str, reason: str) -> dict[str, Any]:
        return self.submit(ERASE_REQUEST, EraseRequestBody(record_id=record_id, reason=reason))

    def approve_erasure(self, record_id: str) -> dict[str, Any]:
        return self.submit(ERASE_APPROVE, EraseApproveBody(record_id=record_id))

    # ---- records ----------------------------------------------------------------------------------

    def put_record(
        self,
        path: Path,
        *,
        patient: str,
        record_type: str = "document",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
        k: int | None = None,
        m: int | None = None,
        deidentified: bool = False,
    ) -> PutResult:
        """Encrypt a file here, store it erasure-coded and register it on the ledger."""
        with open(path, "rb") as fh:
            return self.put_stream(
                fh,
                path.stat().st_size,
                patient=patient,
                record_type=record_type,
                chunk_size=chunk_size,
                progress=progress,
                k=k,
                m=m,
                deidentified=deidentified,
            )

    def custodians(self) -> dict[str, Any]:
        """``{"threshold_num", "threshold_den", "custodians": [{"institution",
        "public_key", "reachable"}]}``:
        the institutions that may hold key shares, as the node sees them now."""
        doc: dict[str, Any] = self.get_json("/api/v1/custody/custodians")
        return doc

    def custody_plan(self) -> tuple[list[str], list[PublicKey], int]:
        """Who gets a key share (every reachable custodian, in the node's order) and the
        threshold: at least ``threshold_num/threshold_den`` of them. Refused
        (``CUSTODIANS_UNREACHABLE``)
        when fewer are reachable than that share of all custodians."""
        doc = self.custodians()
        fraction = (int(doc["threshold_num"]), int(doc["threshold_den"]))
        every = list(doc["custodians"])
        reachable = [c for c in every if c["reachable"]]
        if not every or len(reachable) < min_custody_threshold(len(every), fraction):
            raise Unavailable(
                f"{len(reachable)} of {len(every)} key custodians are reachable from the node; "
                f"{min_custody_threshold(len(every), fraction)} are needed to store a record",
                code="CUSTODIANS_UNREACHABLE",
            )
        names = [str(c["institution"]) for c in reachable]
        keys = [PublicKey.from_hex(str(c["public_key"])) for c in reachable]
        return names, keys, min_custody_threshold(len(reachable), fraction)

    def put_stream(
        self,
        src: BinaryIO,
        size: int,
        *,
        patient: str,
        record_type: str = "document",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
        k: int | None = None,
        m: int | None = None,
        deidentified: bool = False,
        on_behalf_of: str = "",
        part_of: str = "",
        delegation: bytes = b"",
    ) -> PutResult:
        """Encrypt ``size`` bytes of ``src`` (streamed, constant memory), have the node
        spread them over k+m institutions (defaults: the node's choice), check the
        manifest it built lists exactly these chunks, deposit the key's shares (one
        sealed to each reachable custodian), register. A gateway (a ``service``) names
        the service of its institution it stores for in ``on_behalf_of``; a later part
        of a study names the record it continues in ``part_of``. A node's gateway
        registers for a bearer token's identity with its signed ``delegation`` (scope
        ``write``): that identity is the record's creator."""
        custodians, custodian_keys, threshold = self.custody_plan()  # before any upload
        key = new_data_key()
        refs: list[ChunkRef] = []

        def body() -> Iterator[bytes]:
            for cid, ct in encrypt_stream(src, size, key, chunk_size):
                refs.append(ChunkRef(cid=cid, size=len(ct)))
                yield framing.frame_header(framing.CHUNK, len(ct))
                yield ct
                if progress is not None:
                    progress(len(ct) - 16)
            content = build_content_manifest(size, chunk_size, refs)
            yield framing.frame(framing.MANIFEST, encode(content))

        params = {n: v for n, v in (("k", k), ("m", m)) if v is not None}
        stored = self._request(
            "POST", "/api/v1/storage/objects", content=body(), params=params or None
        ).json()
        manifest_cid = str(stored["manifest_cid"])
        raw = base64.b64decode(stored["manifest"])
        manifest = decode_manifest(raw)
        if cid_for(raw) != manifest_cid or manifest.chunks != refs or manifest.size != size:
            raise IntegrityError(
                "the node's manifest does not match the uploaded chunks", code="MANIFEST_MISMATCH"
            )
        shares = split_key(key, threshold, len(custodians))
        self._request(
            "POST",
            "/api/v1/custody/deposits",
            json_body={
                "manifest_cid": manifest_cid,
                "threshold": threshold,
                "shares": [
                    {"institution": name, "sealed_share": seal_to(pk, encode(share)).hex()}
                    for name, pk, share in zip(custodians, custodian_keys, shares, strict=True)
                ],
            },
        )
        receipt = self.submit(
            REGISTER_RECORD,
            RegisterRecordBody(
                patient=patient,
                type=record_type,
                content_hash=manifest_cid,
                size=size,
                chunk_count=len(manifest.chunks),
                shard_root=manifest.shard_root,
                k=manifest.k,
                m=manifest.m,
                placement=manifest.placement,
                custodians=custodians,
                threshold=threshold,
                deidentified=deidentified,
                on_behalf_of=on_behalf_of,
                part_of=part_of,
                delegation=delegation,
            ),
        )
        return PutResult(
            record_id=receipt["data"]["record_id"],
            tx_hash=receipt["tx_hash"],
            height=int(receipt["height"]),
            manifest_cid=manifest_cid,
            size=size,
            chunk_count=len(manifest.chunks),
            k=manifest.k,
            m=manifest.m,
            placement=manifest.placement,
            stored_bytes=manifest.stored_bytes(),
            custodians=custodians,
            threshold=threshold,
            deidentified=deidentified,
        )

    def request_read(
        self,
        record_id: str,
        purpose: str = "treatment",
        *,
        break_glass: bool = False,
        reason: str = "",
        on_behalf_of: str = "",
        delegation: bytes = b"",
    ) -> dict[str, Any]:
        """Commit the access event for a read; raises ACCESS_DENIED if the chain denies it.
        ``break_glass`` (clinicians, with a ``reason``): an emergency read, flagged.
        A node's gateway reads ``on_behalf_of`` a device of its institution, or for the
        identity whose signed ``delegation`` (a bearer token) it holds."""
        return self.submit(
            READ_RECORD,
            ReadRecordBody(
                record_id=record_id,
                purpose=purpose,
                break_glass=break_glass,
                reason=reason,
                on_behalf_of=on_behalf_of,
                delegation=delegation,
            ),
        )

    def release_key(self, record_id: str, access_tx: str) -> tuple[str, bytes]:
        """``(manifest CID, data key)`` of a record: the key rebuilt in memory from
        ``threshold`` key shares that its custodians released (each sealed to this
        client) for the committed read ``access_tx``. Never written anywhere."""
        released = self._request(
            "POST",
            "/api/v1/custody/release",
            json_body={"record_id": record_id, "access_tx": access_tx},
        ).json()
        shares = [
            decode(unseal(self.key, bytes.fromhex(str(s["sealed_share"]))), KeyShare)
            for s in released["shares"]
        ]
        return str(released["manifest_cid"]), combine_key(shares)

    def get_record(
        self,
        record_id: str,
        out: Path,
        *,
        purpose: str = "treatment",
        progress: Progress | None = None,
        on_size: Callable[[int], None] | None = None,
        break_glass: bool = False,
        reason: str = "",
        on_behalf_of: str = "",
        delegation: bytes = b"",
    ) -> dict[str, Any]:
        """Log the read on chain, rebuild the key from its custodians' shares (in memory),
        stream, verify and decrypt. Nothing is written to ``out`` unless all of that
        succeeds. ``on_behalf_of``, ``delegation``: see :meth:`request_read`."""
        receipt = self.request_read(
            record_id,
            purpose,
            break_glass=break_glass,
            reason=reason,
            on_behalf_of=on_behalf_of,
            delegation=delegation,
        )
        access_tx = receipt["tx_hash"]
        # the manifest CID comes with the shares: a reader allowed by consent or care
        # may not see the record's metadata listing (another institution's record)
        expected_cid, key = self.release_key(record_id, access_tx)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
        resp = self._request(
            "GET",
            f"/api/v1/storage/records/{record_id}",
            params={"access_tx": access_tx},
            stream=True,
        )
        size = 0
        try:
            with open(tmp, "wb") as fh, ThreadPoolExecutor(2, thread_name_prefix="decrypt") as pool:
                size = _receive_record(resp, key, expected_cid, fh, pool, progress, on_size)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, out)
        except BaseException:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            raise
        finally:
            resp.close()
        return {
            "record_id": record_id,
            "access_tx": access_tx,
            "height": receipt["height"],
            "size": size,
            "out": str(out),
        }

    def issue_token(self, scopes: list[str], lifetime_ms: int) -> str:
        """A bearer token for this client's identity, valid at this node only (its
        DICOM gateway is the delegate), signed here: the key never leaves the client."""
        doc = self.status()
        gateway = (doc.get("dicom") or {}).get("gateway_id")
        if not gateway:
            raise InvalidInput("this node has no DICOM gateway to delegate to", code="NO_GATEWAY")
        raw = delegation.issue(
            self.key,
            chain_id=str(doc["chain_id"]),
            delegate=str(gateway),
            scopes=scopes,
            now_ms=int(time.time() * 1000),
            lifetime_ms=lifetime_ms,
        )
        return delegation.token_text(raw)

    def list_records(self, patient: str) -> list[dict[str, Any]]:
        return list(self.get_json("/api/v1/records", patient=patient)["records"])

    def record(self, record_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.get_json(f"/api/v1/records/{record_id}")
        return doc

    # ---- audit -----------------------------------------------------------------------------------

    def audit(
        self, subject: str, *, since_height: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """``subject``'s audit events, oldest first (from ``since_height``, at most
        ``limit``)."""
        params: dict[str, Any] = {"subject": subject}
        params.update(
            (k, v) for k, v in (("since_height", since_height), ("limit", limit)) if v is not None
        )
        doc = self._request("GET", "/api/v1/audit", params=params).json()
        return list(doc["events"])

    def audit_proof(self, subject: str) -> bytes:
        return self._request("GET", "/api/v1/audit/proof", params={"subject": subject}).content

    # ---- regulator -------------------------------------------------------------------------------

    def regulator_alerts(
        self, kind: str | None = None, since_height: int | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """Alerts raised on chain, newest first: ``{"alerts": [...], "truncated"}``."""
        params: dict[str, Any] = {}
        if kind:
            params["kind"] = kind
        if since_height is not None:
            params["since_height"] = since_height
        if limit is not None:
            params["limit"] = limit
        doc: dict[str, Any] = self.get_json("/api/v1/regulator/alerts", **params)
        return doc

    def regulator_stats(self) -> dict[str, Any]:
        """Read and write counters aggregated per institution, record type, purpose."""
        doc: dict[str, Any] = self.get_json("/api/v1/regulator/stats")
        return doc

    # ---- DICOM ---------------------------------------------------------------------------------

    def dicom_allowed_aes(self) -> dict[str, Any]:
        """This node's DICOM listener and the calling AE titles it accepts (admins)."""
        doc: dict[str, Any] = self.get_json("/api/v1/dicom/allowed-aes")
        return doc

    def dicom_allow(
        self, ae_title: str, identity: str, *, host: str = "", port: int = 0
    ) -> dict[str, Any]:
        """Map a calling AE title to a ``service`` identity of the node's institution;
        with ``host`` and ``port``, the title is also a C-MOVE destination there."""
        body: dict[str, Any] = {"ae_title": ae_title, "identity": identity}
        if host or port:
            body.update(host=host, port=port)
        resp = self._request("POST", "/api/v1/dicom/allowed-aes", json_body=body)
        doc: dict[str, Any] = resp.json()
        return doc

    def dicom_deny(self, ae_title: str) -> dict[str, Any]:
        """Remove a calling AE title from the node's allow-list."""
        # every character escaped, dots too (a title ".." must not become a dot segment);
        # the node checks the signature over the path as sent
        escaped = quote(ae_title, safe="").replace(".", "%2E")
        resp = self._request("DELETE", f"/api/v1/dicom/allowed-aes/{escaped}")
        doc: dict[str, Any] = resp.json()
        return doc

    def dicom_link_patient(self, mrn: str, patient: str) -> dict[str, Any]:
        """Link a hospital patient identifier (DICOM PatientID, MRN) to a ledger patient."""
        resp = self._request(
            "POST", "/api/v1/dicom/patients", json_body={"mrn": mrn, "patient": patient}
        )
        doc: dict[str, Any] = resp.json()
        return doc

    def merge_patient(self, pseudonym: str, patient: str, record_ids: list[str]) -> dict[str, Any]:
        """Move records of a pseudonymous patient of this admin's institution to
        ``patient`` (at most 256 per transaction)."""
        body = MergeBody(pseudonym=pseudonym, patient=patient, record_ids=sorted(record_ids))
        return self.submit(PATIENT_MERGE, body)

    def dicom_reindex(self) -> dict[str, Any]:
        """Rebuild the node's study index from the ledger (admins; a read per study)."""
        doc: dict[str, Any] = self._request(
            "POST", "/api/v1/dicom/reindex", json_body={}, timeout=REINDEX_TIMEOUT_S
        ).json()
        return doc

    def dicom_patient_links(self) -> dict[str, Any]:
        """The hospital patient identifiers linked at this node's institution (admins)."""
        doc: dict[str, Any] = self.get_json("/api/v1/dicom/patients")
        return doc


def _raw_pieces(resp: httpx.Response) -> Iterator[bytes]:
    """The response body as it arrives; a broken connection is a typed error."""
    try:
        yield from resp.iter_raw()
    except httpx.HTTPError as exc:
        raise Unavailable(
            f"the node's stream broke off ({type(exc).__name__})", code="DOWNLOAD_TRUNCATED"
        )


def _receive_record(
    resp: httpx.Response,
    key: bytes,
    expected_cid: str,
    fh: BinaryIO,
    pool: ThreadPoolExecutor,
    progress: Progress | None,
    on_size: Callable[[int], None] | None,
) -> int:
    """Parse the node's frame stream; verify and decrypt chunks in a thread window."""
    parser = framing.FrameParser(64 * 1024 * 1024)
    decryptor: ChunkDecryptor | None = None
    pending: deque[Future[int]] = deque()
    index = 0
    fd = fh.fileno()

    def open_and_write(dec: ChunkDecryptor, i: int, payload: bytes) -> int:
        # positional writes: chunks land in place whatever order the threads finish
        plain = dec.open(i, payload, check_cid=False)  # the node checked it; GCM checks too
        os.pwrite(fd, plain, i * dec.manifest.chunk_size)
        return len(plain)

    def drain(limit: int) -> None:
        while len(pending) > limit:
            n = pending.popleft().result()
            if progress is not None:
                progress(n)

    for piece in _raw_pieces(resp):
        for kind, payload in parser.feed(piece):
            if kind == framing.MANIFEST and decryptor is None:
                if cid_for(payload) != expected_cid:
                    raise IntegrityError(
                        "the node sent a manifest other than the one on the ledger",
                        code="MANIFEST_MISMATCH",
                    )
                manifest = decode_manifest(payload)
                decryptor = ChunkDecryptor(manifest, key)
                if on_size is not None:
                    on_size(manifest.size)
            elif kind == framing.CHUNK and decryptor is not None:
                if index >= len(decryptor.manifest.chunks):
                    raise IntegrityError(
                        "more chunks than the manifest lists", code="CHUNK_UNEXPECTED"
                    )
                pending.append(pool.submit(open_and_write, decryptor, index, payload))
                index += 1
                drain(8)
            elif kind == framing.ERROR:
                err = msgspec.json.decode(payload)
                raise IntegrityError(str(err.get("message")), code=str(err.get("code")))
            else:
                raise IntegrityError("unexpected frame from the node", code="BAD_FRAME")
    drain(0)
    if decryptor is None or index != len(decryptor.manifest.chunks) or parser.pending:
        raise IntegrityError("the node's stream ended early", code="DOWNLOAD_TRUNCATED")
    return decryptor.manifest.size


def _suspend_body(identity_id: str, reason: str) -> Any:
    from medledger.app.model import SuspendBody

    return SuspendBody(id=identity_id, reason=reason)


def _error_from(resp: httpx.Response) -> MedLedgerError:
    try:
        err = resp.json()["error"]
        return from_wire(resp.status_code, str(err["code"]), str(err["message"]))
    except Exception:
        return from_wire(resp.status_code, f"HTTP_{resp.status_code}", resp.reason_phrase)

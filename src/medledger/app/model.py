"""State values, transaction bodies and state keys of the application.

Keys are versioned (``v1/``) so a later layout can live beside this one.
"""

from __future__ import annotations

import re
from enum import StrEnum

from medledger.codec import Record
from medledger.ledger.block import Event, Vote
from medledger.storage.erasure import shard_count, stripe_count


class Role(StrEnum):
    ADMIN = "admin"
    CLINICIAN = "clinician"
    PATIENT = "patient"
    RESEARCHER = "researcher"
    REGULATOR = "regulator"
    PHARMACY = "pharmacy"
    INSURER = "insurer"
    SERVICE = "service"
    NODE = "node"  # a member's or observer's node key: p2p, evidence; no record access


ROLES = frozenset(r.value for r in Role)

ACTIVE = "active"
SUSPENDED = "suspended"


class Identity(Record, frozen=True):
    id: str
    role: str
    institution: str
    status: str
    enrolled_height: int
    enrolled_by: str


def new_identity(id_: str, role: str, institution: str, height: int, enrolled_by: str) -> Identity:
    """An identity as enrolment creates it: active from ``height``."""
    return Identity(
        id=id_,
        role=role,
        institution=institution,
        status=ACTIVE,
        enrolled_height=height,
        enrolled_by=enrolled_by,
    )


def enrollment_event(enrolled_by: Identity, id_: str, role: str, note: str = "") -> Event:
    """The audit event of an enrolment into ``enrolled_by``'s institution."""
    return Event(
        action="enroll",
        actor=enrolled_by.id,
        subject=id_,
        record_id="",
        outcome="ok",
        detail=f"role={role} institution={enrolled_by.institution}" + (f" {note}" if note else ""),
    )


class Institution(Record, frozen=True):
    name: str
    admin_id: str


class RecordMeta(Record, frozen=True):
    record_id: str
    patient: str
    type: str
    content_hash: str  # CID of the storage manifest
    size: int
    chunk_count: int
    shard_root: bytes  # Merkle root over the record's shards (in the manifest too)
    k: int  # erasure code: data shards per stripe
    m: int  # parity shards per stripe
    placement: list[str]  # institution holding each shard column (now: repairs move them)
    custodians: list[str]  # institutions holding Shamir shares of the data key (x = index+1)
    threshold: int  # shares needed to rebuild the key
    deidentified: bool  # content carries no direct identifiers (what researchers may read)
    institution: str
    creator: str
    created_ms: int
    height: int
    erased_height: int = 0  # 0 while live; the height of the erasure that tombstoned it
    # a later part of the same study: the record it continues (RegisterRecordBody.part_of)
    part_of: str = ""
    # who deposited the key shares, when not the creator: the node's gateway that
    # registered the record for a bearer token's identity (a delegated registration)
    depositor: str = ""

    @property
    def key_depositor(self) -> str:
        """The identity the custodians keep this record's key shares under."""
        return self.depositor or self.creator

    @property
    def stripes(self) -> int:
        return stripe_count(self.chunk_count, self.k)

    @property
    def shard_count(self) -> int:
        return shard_count(self.chunk_count, self.k, self.m)


# ---- transaction kinds and bodies -------------------------------------------------

ENROLL = "identity.enroll"
PSEUDONYM_ENROLL = "patient.pseudonym"  # a gateway files an unlinked PatientID under one
PATIENT_MERGE = "patient.merge"  # an admin merges a pseudonymous patient into a patient
SUSPEND = "identity.suspend"
REGISTER_RECORD = "record.register"
READ_RECORD = "record.read"
ERASE_REQUEST = "record.erase_request"
ERASE_APPROVE = "record.erase_approve"
GRANT_CONSENT = "consent.grant"
REVOKE_CONSENT = "consent.revoke"
START_CARE = "care.start"
END_CARE = "care.end"
SET_PROXY = "proxy.set"


class EnrollBody(Record, frozen=True):
    id: str
    role: str
    # a signed delegation (app/delegation.py, scope "enroll"): the sender, a node's
    # gateway, enrolls for the admin who signed it; empty: the sender enrolls itself
    delegation: bytes = b""


class PseudonymBody(Record, frozen=True):
    """A gateway enrolls a pseudonymous patient of its institution: the patient of
    studies whose hospital PatientID is not linked to a ledger patient yet."""

    id: str


MAX_MERGE_RECORDS = 256


class MergeBody(Record, frozen=True):
    """An admin of the pseudonym's institution moves its records to ``patient`` (the
    PatientID is now linked to them); the pseudonym retires once it has none left."""

    pseudonym: str
    patient: str
    record_ids: list[str]  # at most MAX_MERGE_RECORDS, each the pseudonym's


class PartCount(Record, frozen=True):
    """How many live (not erased) parts continue a study's first record."""

    live: int


class Pseudonym(Record, frozen=True):
    id: str
    institution: str
    created_by: str  # the gateway that enrolled it
    height: int
    records: int  # records still filed under it
    merged_into: str  # "" until merged (then suspended)


class SuspendBody(Record, frozen=True):
    id: str
    reason: str


class RegisterRecordBody(Record, frozen=True):
    patient: str
    type: str
    content_hash: str
    size: int
    chunk_count: int
    shard_root: bytes
    k: int
    m: int
    placement: list[str]
    custodians: list[str]
    threshold: int
    deidentified: bool = False
    # a gateway (a service) registering for another service of its institution, such as
    # the modality that sent a study by DICOM C-STORE (ADR 0008); empty: for itself
    on_behalf_of: str = ""
    # a study's later part (DICOM instances that came after the study was stored): the
    # record it continues; same patient, type and institution (ADR 0008)
    part_of: str = ""
    # a signed delegation (scope "write"): a node's gateway registers for the identity
    # that signed it (a FHIR DocumentReference create); the gateway deposits the shares
    delegation: bytes = b""


class ReadRecordBody(Record, frozen=True):
    record_id: str
    purpose: str
    break_glass: bool = False  # an emergency read outside the usual rules (clinicians only)
    reason: str = ""  # required for break-glass: why
    # a gateway (a service) reading for a service of its institution, such as the
    # DICOM device that asked for a C-MOVE (ADR 0008); empty: for itself
    on_behalf_of: str = ""
    # a signed delegation (scope "read"): the sender, a node's gateway, reads for the
    # identity that signed it (a DICOMweb or FHIR client's bearer token)
    delegation: bytes = b""


class EraseRequestBody(Record, frozen=True):
    """A patient (or proxy) asks that a record be erased (right to be forgotten)."""

    record_id: str
    reason: str


class EraseApproveBody(Record, frozen=True):
    """A regulator or an admin of the record's institution co-signs an erasure."""

    record_id: str


class EraseRequest(Record, frozen=True):
    record_id: str
    patient: str
    requested_by: str
    reason: str
    height: int


# ---- consent, care relationships, delegation (FHIR R4 Consent-shaped) --------------

ACTOR_IDENTITY = "identity"
ACTOR_INSTITUTION = "institution"
PERMIT = "permit"
DENY = "deny"
CONSENT_ACTIVE = "active"
CONSENT_INACTIVE = "inactive"  # revoked (FHIR Consent.status "inactive")


class GrantConsentBody(Record, frozen=True):
    """A consent provision: ``actor`` may (permit) or may not (deny) read ``patient``'s
    records of ``record_ids`` / ``types`` (empty: all) for ``purposes`` in a period."""

    patient: str  # the patient the consent is about (the sender, or a proxy's patient)
    actor_kind: str  # identity | institution
    actor: str
    purposes: list[str]
    record_ids: list[str]  # FHIR provision.data; empty: every record
    types: list[str]  # FHIR provision.class (record types); empty: every type
    start_ms: int  # FHIR provision.period; 0: from now
    end_ms: int  # 0: open-ended
    permit: bool  # FHIR provision.type: permit | deny
    delegation: bytes = b""  # scope "consent": a gateway grants for the token's identity


class RevokeConsentBody(Record, frozen=True):
    consent_id: str
    delegation: bytes = b""  # scope "consent": a gateway revokes for the token's identity


class Consent(Record, frozen=True):
    consent_id: str
    patient: str
    grantor: str
    actor_kind: str
    actor: str
    purposes: list[str]
    record_ids: list[str]
    types: list[str]
    start_ms: int
    end_ms: int
    permit: bool
    status: str  # active | inactive
    height: int
    revoked_height: int


class ConsentList(Record, frozen=True):
    """A patient's active consent IDs (sorted): what a read decision looks at."""

    ids: list[str]


CARE_KINDS = frozenset({"admission", "referral", "outpatient"})


class CareBody(Record, frozen=True):
    """care.start / care.end: ``clinician`` treats (or stops treating) ``patient``."""

    patient: str
    clinician: str
    kind: str  # admission | referral | outpatient (ignored by care.end)


class CareRelation(Record, frozen=True):
    patient: str
    clinician: str
    institution: str
    kind: str
    started_by: str
    height: int


class SetProxyBody(Record, frozen=True):
    """A patient names (active) or removes (not active) a guardian or proxy."""

    proxy: str
    active: bool


class ProxyList(Record, frozen=True):
    proxies: list[str]  # sorted identity IDs acting for the patient


class AccessRate(Record, frozen=True):
    """Reads by one identity in the current spike window (block time)."""

    window: int
    reads: int


# ---- alerts to the regulator ---------------------------------------------------------

REGULATOR_SUBJECT = "@regulator"  # the audit-index subject of every regulator alert
ALERT_BREAK_GLASS = "break_glass"
ALERT_DENIED = "denied_access"
ALERT_SPIKE = "access_spike"
ALERT_STORAGE = "storage_audit_failure"
ALERT_JAILED = "validator_jailed"
ALERT_ERASURE = "erasure"


def alert_event(kind: str, actor: str, record_id: str, detail: str) -> Event:
    """An alert to the regulator: indexed under ``@regulator``, the kind as outcome."""
    return Event(
        action="alert",
        actor=actor,
        subject=REGULATOR_SUBJECT,
        record_id=record_id,
        outcome=kind,
        detail=detail,
    )


# ---- storage audits and repair -----------------------------------------------------

STORAGE_ALERT = "storage.alert"
STORAGE_REPAIR = "storage.repair"
STORAGE_SUBJECT = "@storage"  # the audit-index subject of storage alerts and repairs
ALERT_REASONS = frozenset({"missing", "corrupt", "unreachable"})


class StorageAlertBody(Record, frozen=True):
    """A storage challenge (or check) failed: shards of one column at one institution."""

    record_id: str
    column: int
    institution: str
    reason: str  # missing | corrupt | unreachable
    stripes: list[int]  # the failed stripes (sorted; may be a sample)
    seed_height: int  # the block whose hash seeded the audit (0: an on-demand check)


class StorageRepairBody(Record, frozen=True):
    """Shards of a column were rebuilt from other shards onto ``to_institution``."""

    record_id: str
    column: int
    from_institution: str
    to_institution: str
    shards: int  # how many shards were rebuilt


# ---- keys ---------------------------------------------------------------------------


def k_identity(id_: str) -> bytes:
    return b"v1/id/" + id_.encode()


def k_pseudonym(id_: str) -> bytes:
    return b"v1/pseudonym/" + id_.encode()


def k_parts(record_id: str) -> bytes:
    return b"v1/parts/" + record_id.encode()


def k_nonce(id_: str) -> bytes:
    return b"v1/nonce/" + id_.encode()


def k_institution(name: str) -> bytes:
    return b"v1/inst/" + name.encode()


def k_record(record_id: str) -> bytes:
    return b"v1/rec/" + record_id.encode()


def k_patient_record(patient: str, record_id: str) -> bytes:
    return b"v1/prec/" + patient.encode() + b"/" + record_id.encode()


def p_patient_records(patient: str) -> bytes:
    return b"v1/prec/" + patient.encode() + b"/"


def k_consent(consent_id: str) -> bytes:
    return b"v1/consent/" + consent_id.encode()


def k_patient_consents(patient: str) -> bytes:
    return b"v1/pconsents/" + patient.encode()


def k_care(patient: str, clinician: str) -> bytes:
    return b"v1/care/" + patient.encode() + b"/" + clinician.encode()


def k_proxies(patient: str) -> bytes:
    return b"v1/proxy/" + patient.encode()


def k_erase_request(record_id: str) -> bytes:
    return b"v1/erase/" + record_id.encode()


def k_access_rate(id_: str) -> bytes:
    return b"v1/rate/" + id_.encode()


STATS_PREFIX = b"v1/stats/"


def k_stats(action: str, institution: str, record_type: str, purpose: str, outcome: str) -> bytes:
    """A counter (8-byte big-endian) of events: action/institution/type/purpose/outcome;
    ``institution`` is the acting identity's."""
    return STATS_PREFIX + "/".join((action, institution, record_type, purpose, outcome)).encode()


RECORD_TYPE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
INSTITUTION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
PURPOSES = frozenset(
    {"treatment", "patient-access", "research", "insurance", "referral", "dispensing", "audit"}
)


def record_id_for(tx_hash: bytes) -> str:
    return "r" + tx_hash[:16].hex()


def consent_id_for(tx_hash: bytes) -> str:
    return "c" + tx_hash[:16].hex()


_CONSENT_ID_RE = re.compile(r"c[0-9a-f]{32}")


def is_consent_id(value: str) -> bool:
    return _CONSENT_ID_RE.fullmatch(value) is not None


_RECORD_ID_RE = re.compile(r"r[0-9a-f]{32}")


def is_record_id(value: str) -> bool:
    return _RECORD_ID_RE.fullmatch(value) is not None


# ---- consortium membership: validator set, governance, evidence ----------------------

PROPOSE_MEMBER = "governance.propose"
VOTE_MEMBER = "governance.vote"
SUBMIT_EVIDENCE = "evidence.submit"

GOV_ADD = "add"
GOV_REMOVE = "remove"
GOV_OPEN = "open"
GOV_PASSED = "passed"


class ProposeMemberBody(Record, frozen=True):
    action: str  # add | remove
    institution: str
    validator_public_key: bytes  # add: the new member's node key; remove: empty
    admin_public_key: bytes  # add: the new member's admin key; remove: empty
    power: int  # add: voting power; remove: 0


class VoteMemberBody(Record, frozen=True):
    proposal_id: str
    approve: bool


class EvidenceVote(Record, frozen=True):
    """A signed consensus vote as evidence carries it."""

    vote: Vote
    signature: bytes


class EvidenceBody(Record, frozen=True):
    first: EvidenceVote
    second: EvidenceVote


class GovProposal(Record, frozen=True):
    id: str
    action: str
    institution: str
    validator_public_key: bytes
    admin_public_key: bytes
    power: int
    proposer: str  # institution that proposed
    approvals: list[str]  # institutions, sorted
    rejections: list[str]
    status: str
    height: int
    decided_height: int


class EvidenceRecord(Record, frozen=True):
    validator: str
    institution: str
    height: int
    round: int
    type: int
    first_hash: bytes
    second_hash: bytes
    committed_height: int


def k_validators() -> bytes:
    return b"v1/valset"


def k_proposal(proposal_id: str) -> bytes:
    return b"v1/gov/" + proposal_id.encode()


def k_evidence(validator_id: str) -> bytes:
    return b"v1/evidence/" + validator_id.encode()


def p_evidence() -> bytes:
    return b"v1/evidence/"

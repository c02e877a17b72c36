"""Properties of the access policy.

(a) ``access.decide_read`` over random actors, records, purposes, facts and times: the
invariants the rules promise, and agreement with a small reference model written from
the rules (``model_decide``).

(b) Random sequences of consent.grant / consent.revoke / care.start / care.end /
proxy.set / record.read transactions executed in committed blocks: every result equals
what a reference model of the ledger's consents, care relationships and proxies
predicts, and no read is ever allowed by a revoked consent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from mlhelpers import PROPS, World, grant_body

from medledger.app import access
from medledger.app.model import (
    ACTIVE,
    CONSENT_ACTIVE,
    CONSENT_INACTIVE,
    END_CARE,
    GRANT_CONSENT,
    PURPOSES,
    READ_RECORD,
    REVOKE_CONSENT,
    SET_PROXY,
    START_CARE,
    SUSPENDED,
    CareBody,
    Consent,
    Identity,
    ReadRecordBody,
    RecordMeta,
    RevokeConsentBody,
    Role,
    SetProxyBody,
    consent_id_for,
)

CARE = frozenset({"treatment", "referral"})
NO_CONTENT_ROLES = frozenset({"regulator", "admin", "node"})

# ---- the reference model ---------------------------------------------------------------------


@dataclass(frozen=True)
class MConsent:
    """A consent provision as the model sees it."""

    consent_id: str
    patient: str
    kind: str  # identity | institution
    actor: str
    purposes: frozenset[str]
    record_ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    start_ms: int = 0
    end_ms: int = 0
    permit: bool = True
    active: bool = True


def m_matches(
    c: MConsent, actor_id: str, institution: str, record: RecordMeta, purpose: str, now: int
) -> bool:
    """Does provision ``c`` cover this reader, record, purpose and time?"""
    who = actor_id if c.kind == "identity" else institution if c.kind == "institution" else None
    return (
        c.active
        and c.patient == record.patient
        and c.actor == who
        and purpose in c.purposes
        and (not c.record_ids or record.record_id in c.record_ids)
        and (not c.types or record.type in c.types)
        and (not c.start_ms or now >= c.start_ms)
        and (not c.end_ms or now < c.end_ms)
    )


def model_decide(
    actor: Identity,
    record: RecordMeta,
    purpose: str,
    *,
    in_care: bool,
    is_proxy: bool,
    consents: list[MConsent],
    now: int,
    break_glass: bool,
) -> tuple[bool, str]:
    """(allowed, rule) by the rules of issue 6, in their order."""
    role = actor.role
    if actor.status != ACTIVE:
        return False, "identity_suspended"
    if record.erased_height:
        return False, "record_erased"
    if role == "patient" and actor.id == record.patient:
        return True, "own_record"
    if role == "regulator":
        return False, "regulator_no_content"
    if role in ("admin", "node"):
        return False, "role_no_content"
    if is_proxy:
        return True, "proxy"
    if role == "patient":
        return False, "role_no_content"
    matching = [
        c for c in consents if m_matches(c, actor.id, actor.institution, record, purpose, now)
    ]
    if break_glass:
        return (
            (True, "break_glass") if role == "clinician" else (False, "break_glass_not_permitted")
        )
    if any(not c.permit for c in matching):
        return False, "consent_denies"
    permitted = any(c.permit for c in matching)
    if role == "researcher":
        if not record.deidentified:
            return False, "not_deidentified"
        if purpose != "research":
            return False, "purpose_not_permitted"
    elif role == "service":
        if actor.institution == record.institution:
            return True, "own_institution"
        return False, "other_institution"
    elif role == "clinician":
        if actor.id == record.creator:
            return True, "author"
        if in_care and purpose in CARE:
            return True, "care_relationship"
    if permitted:
        return True, "consent"
    return False, "not_in_care" if role == "clinician" else "no_consent"


# ---- (a) the engine -----------------------------------------------------------------------------

INSTITUTIONS = ["alpha", "beta", "gamma"]
IDS = ["p0", "p1", "u0", "u1"]  # patients and others share one small pool: collisions matter
RECORD_IDS = ["r" + "a" * 32, "r" + "b" * 32]
TYPES = ["lab", "imaging.ct"]
SORTED_PURPOSES = sorted(PURPOSES)
TIMES = st.integers(min_value=0, max_value=60)

actors = st.builds(
    Identity,
    id=st.sampled_from(IDS),
    # every role, the ones with several rules more often
    role=st.sampled_from(
        sorted(r.value for r in Role) + ["clinician"] * 4 + ["researcher", "service"] * 2
    ),
    institution=st.sampled_from(INSTITUTIONS),
    status=st.sampled_from([ACTIVE] * 7 + [SUSPENDED]),
    enrolled_height=st.just(1),
    enrolled_by=st.just("genesis"),
)


@st.composite
def records(draw: st.DrawFn) -> RecordMeta:
    return RecordMeta(
        record_id=draw(st.sampled_from(RECORD_IDS)),
        patient=draw(st.sampled_from(IDS[:2])),
        type=draw(st.sampled_from(TYPES)),
        content_hash="",
        size=1,
        chunk_count=1,
        shard_root=bytes(32),
        k=1,
        m=0,
        placement=["alpha"],
        custodians=["alpha"],
        threshold=1,
        deidentified=draw(st.booleans()),
        institution=draw(st.sampled_from(INSTITUTIONS)),
        creator=draw(st.sampled_from(IDS)),
        created_ms=0,
        height=1,
        erased_height=draw(st.sampled_from([0] * 7 + [7])),
    )


def subset(values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(values), unique=True, max_size=len(values)).map(sorted)


@st.composite
def consents(draw: st.DrawFn, aim: tuple[Identity, RecordMeta, str] | None = None) -> Consent:
    """A provision; aimed (often) at ``aim``'s reader, record and purpose so that it
    matches, or nearly matches, more often than chance would have it."""
    kind = draw(st.sampled_from(["identity", "institution", "identity", "bogus"]))
    start = draw(st.sampled_from([0, 0, draw(TIMES)]))
    end = draw(st.sampled_from([0, 0, draw(TIMES)]))
    patient = draw(st.sampled_from(IDS[:2]))
    actor = draw(st.sampled_from(IDS + INSTITUTIONS))
    purposes = draw(subset(SORTED_PURPOSES).filter(bool))
    if aim is not None and draw(st.sampled_from([True, True, False])):
        reader, record, purpose = aim
        patient = record.patient
        actor = reader.institution if kind == "institution" else reader.id
        purposes = sorted({*purposes, purpose})
    return Consent(
        consent_id="c" + draw(st.sampled_from("0123456789")) * 32,
        patient=patient,
        grantor=draw(st.sampled_from(IDS)),
        actor_kind=kind,
        actor=actor,
        purposes=purposes,
        record_ids=draw(st.sampled_from([[], [], RECORD_IDS[:1], RECORD_IDS])),
        types=draw(st.sampled_from([[], [], TYPES[:1]])),
        start_ms=start,
        end_ms=end,
        permit=draw(st.sampled_from([True] * 3 + [False])),
        status=draw(st.sampled_from([CONSENT_ACTIVE] * 3 + [CONSENT_INACTIVE])),
        height=1,
        revoked_height=0,
    )


# the purposes each role typically reads for: drawn more often
NATURAL_PURPOSES = {
    "clinician": ["referral", "treatment"],
    "researcher": ["research"],
    "pharmacy": ["dispensing"],
    "insurer": ["insurance"],
    "patient": ["patient-access"],
    "regulator": ["audit"],
}
Scenario = tuple[Identity, RecordMeta, str, access.ReadFacts, int, bool]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """(actor, record, purpose, facts, now, break_glass) of one read decision."""
    actor = draw(actors)
    record = draw(records())
    natural = NATURAL_PURPOSES.get(actor.role, SORTED_PURPOSES)
    purpose = draw(st.sampled_from([*SORTED_PURPOSES, *natural, *natural]))
    facts = access.ReadFacts(
        in_care=draw(st.booleans()),
        is_proxy=draw(st.sampled_from([False] * 5 + [True])),
        consents=tuple(draw(st.lists(consents((actor, record, purpose)), max_size=3))),
    )
    return actor, record, purpose, facts, draw(TIMES), draw(st.sampled_from([False] * 3 + [True]))


def as_model(c: Consent) -> MConsent:
    return MConsent(
        consent_id=c.consent_id,
        patient=c.patient,
        kind=c.actor_kind,
        actor=c.actor,
        purposes=frozenset(c.purposes),
        record_ids=frozenset(c.record_ids),
        types=frozenset(c.types),
        start_ms=c.start_ms,
        end_ms=c.end_ms,
        permit=c.permit,
        active=c.status == CONSENT_ACTIVE,
    )


@settings(PROPS, max_examples=1000)
@given(scenarios())
def test_decide_read_invariants(scenario: Scenario) -> None:
    actor, record, purpose, facts, now, break_glass = scenario
    d = access.decide_read(actor, record, purpose, facts, now, break_glass=break_glass)
    role = actor.role
    is_patient = role == "patient" and actor.id == record.patient
    matching = [c for c in facts.consents if access.consent_matches(c, actor, record, purpose, now)]

    # deterministic: the same inputs give the same decision; the order of the
    # consents may change which one a reason names, never the outcome or the rule
    assert access.decide_read(actor, record, purpose, facts, now, break_glass=break_glass) == d
    reordered = access.ReadFacts(facts.in_care, facts.is_proxy, tuple(reversed(facts.consents)))
    again = access.decide_read(actor, record, purpose, reordered, now, break_glass=break_glass)
    assert (again.allowed, again.rule, again.break_glass) == (d.allowed, d.rule, d.break_glass)

    event(f"rule: {d.rule}")
    # every decision names its rule and reason
    assert d.rule and d.reason
    if d.allowed:
        assert actor.status == ACTIVE, "a suspended identity never reads"
        assert not record.erased_height, "an erased record is never read"
    if role in NO_CONTENT_ROLES:
        assert not d.allowed, "regulators, admins and nodes read no content, even as proxies"
    if d.break_glass:
        assert d.allowed and break_glass and role == "clinician"
    if break_glass and role != "clinician" and d.allowed:
        assert d.rule in ("own_record", "proxy")
    if role == "researcher" and not record.deidentified and not facts.is_proxy:
        assert not d.allowed, "researchers read de-identified records only"
    if any(not c.permit for c in matching):
        exempt = is_patient or facts.is_proxy or (break_glass and role == "clinician")
        if not exempt:
            assert not d.allowed and d.rule in (
                "consent_denies",
                "identity_suspended",
                "record_erased",
                "regulator_no_content",
                "role_no_content",
                "break_glass_not_permitted",
            )
    justified = (
        is_patient
        or facts.is_proxy
        or (break_glass and role == "clinician")
        or any(c.permit for c in matching)
        or (role == "clinician" and actor.id == record.creator)
        or (role == "clinician" and facts.in_care and purpose in CARE)
        or (role == "service" and actor.institution == record.institution)
    )
    if not justified:
        assert not d.allowed
    if d.rule == "consent":
        assert d.allowed and any(c.permit for c in matching)
        assert any(c.consent_id in d.reason for c in matching if c.permit)
    # and the whole decision agrees with the reference model
    expected = model_decide(
        actor,
        record,
        purpose,
        in_care=facts.in_care,
        is_proxy=facts.is_proxy,
        consents=[as_model(c) for c in facts.consents],
        now=now,
        break_glass=break_glass,
    )
    assert (d.allowed, d.rule) == expected


@settings(PROPS, max_examples=500)
@given(scenarios())
def test_consent_matches_agrees_with_the_model(scenario: Scenario) -> None:
    actor, record, purpose, facts, _now, _bg = scenario
    for consent in facts.consents:
        for now in {
            0,
            60,
            consent.start_ms,
            consent.start_ms - 1,
            consent.end_ms,
            consent.end_ms - 1,
        }:
            got = access.consent_matches(consent, actor, record, purpose, now)
            want = m_matches(as_model(consent), actor.id, actor.institution, record, purpose, now)
            assert got == want
            event(f"matches: {got}")


# ---- (b) the ledger ------------------------------------------------------------------------------

PATIENTS = ["alpha.patient", "alpha.patient2", "beta.patient"]
CLINICIANS = ["alpha.clinician", "alpha.clinician2", "beta.clinician", "beta.clinician2"]
ADMINS = ["alpha.admin", "alpha.admin2", "beta.admin"]
READERS = [
    *PATIENTS,
    *CLINICIANS,
    "alpha.service",
    "beta.service",
    "alpha.researcher",
    "alpha.pharmacy",
    "alpha.insurer",
    "alpha.regulator",
    "alpha.admin",
]
# grantees (an institution has no dot), those that are no record's author first
GRANTEES = [
    "beta.clinician2",
    "alpha.clinician2",
    "alpha.researcher",
    "beta",
    "alpha.pharmacy",
    "beta.clinician",
    "alpha.clinician",
    "alpha.patient2",
    "alpha",
]
PROXIES = ["alpha.patient2", "beta.patient", "beta.clinician2", "alpha.pharmacy"]
STEP_PURPOSES = ["treatment", "referral", "research", "dispensing", "patient-access"]

# (author, patient, type, deidentified) of the records the sequences read, besides the
# world's own (alpha.patient's imaging.ct by alpha.clinician)
EXTRA_RECORDS = [
    ("beta.clinician", "alpha.patient", "lab", True),
    ("beta.clinician2", "beta.patient", "imaging.ct", False),
    ("alpha.service", "alpha.patient2", "lab", False),
]

SIGNERS = ["self"] * 5 + ["alpha.patient2", "beta.clinician2"]  # self: the patient
MOSTLY_ALPHA = ["alpha.patient", "alpha.patient", "alpha.patient", "alpha.patient2", "beta.patient"]

steps = st.one_of(
    st.tuples(
        st.just("grant"),
        st.sampled_from(SIGNERS),
        st.sampled_from(MOSTLY_ALPHA),
        st.sampled_from(GRANTEES),
        st.lists(st.sampled_from(STEP_PURPOSES[:4]), min_size=1, max_size=2, unique=True),
        st.sampled_from(["any"] * 4 + ["lab", "rec0", "until", "from"]),
        st.sampled_from([True] * 5 + [False]),
    ),
    st.tuples(st.just("revoke"), st.sampled_from(SIGNERS), st.integers(0, 40)),
    st.tuples(
        st.just("care.start"),
        st.sampled_from([*ADMINS, "alpha.clinician", "@admin", "@admin", "@admin"]),
        st.sampled_from([*CLINICIANS, "alpha.service"]),
        st.sampled_from(MOSTLY_ALPHA),
    ),
    st.tuples(
        st.just("care.end"),
        st.sampled_from([*ADMINS, "@admin", "@admin", "@admin"]),
        st.sampled_from(CLINICIANS),
        st.sampled_from(MOSTLY_ALPHA),
        st.sampled_from([True, True, False]),  # end an existing relationship (if any)
        st.integers(0, 40),
    ),
    st.tuples(
        st.just("proxy"),
        st.sampled_from([*MOSTLY_ALPHA, "alpha.clinician"]),
        st.sampled_from(PROXIES),
        st.booleans(),
    ),
    st.tuples(
        st.just("read"),
        st.sampled_from([*READERS, *CLINICIANS, *PROXIES]),
        st.sampled_from([0, 0, 1, 1, 2, 3]),  # records 0 and 1 are alpha.patient's
        st.sampled_from(["treatment", "treatment", *STEP_PURPOSES]),
        st.sampled_from([False] * 7 + [True]),
        st.integers(0, 40),
    ),
)
# reads are what is checked: make them common, and often by someone a consent (maybe a
# revoked one) or a care relationship names, for what it names
steps = st.one_of(
    st.tuples(
        st.just("read"),
        st.sampled_from(["@consent", "@consent", "@care"]),
        st.sampled_from([0, 1, 2, 3]),
        st.sampled_from(STEP_PURPOSES),
        st.sampled_from([False] * 7 + [True]),
        st.integers(0, 40),
    ),
    steps,
)


@dataclass
class Ledger:
    """The reference model: consents, care relationships and proxies."""

    consents: dict[str, MConsent] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # consent IDs in grant order
    care: set[tuple[str, str]] = field(default_factory=set)  # (patient id, clinician id)
    proxies: dict[str, set[str]] = field(default_factory=dict)  # patient id -> proxy ids

    def is_proxy(self, patient: str, actor: str) -> bool:
        return actor in self.proxies.get(patient, set())

    def active_of(self, patient: str) -> list[MConsent]:
        return [c for c in self.consents.values() if c.active and c.patient == patient]


class Run:
    """A world, its identities, its records and the model, stepping in lockstep."""

    def __init__(self) -> None:
        self.w = World()
        chain = self.w.chain
        self.ids = {name: k.id for name, k in self.w.keys.items()}
        self.names = {i: name for name, i in self.ids.items()}
        self.ident = {
            name: chain.app.query_identity(i) for name, i in self.ids.items() if "." in name
        }
        self.records: list[RecordMeta] = []
        rids = [self.w.record_id]
        for author, patient, type_, deid in EXTRA_RECORDS:
            res = chain.register(self.w[author], self.w[patient], type=type_, deidentified=deid)
            assert res.ok, res
            rids.append(res.data["record_id"])
        for rid in rids:
            meta = chain.app.query_record(rid)
            assert meta is not None
            self.records.append(meta)
        self.m = Ledger()

    def who(self, name: str) -> Identity:
        ident = self.ident[name]
        assert ident is not None
        return ident

    # each step: (signed tx, a function that checks the result and updates the model)
    def build(self, step: tuple[Any, ...], now: int) -> tuple[Any, Any]:
        kind = step[0]
        return getattr(self, "_" + kind.replace(".", "_"))(now, *step[1:])

    def _acting_for(self, signer: str, patient: str) -> bool:
        return self.ids[signer] == self.ids[patient] or self.m.is_proxy(
            self.ids[patient], self.ids[signer]
        )

    def _grant(
        self,
        now: int,
        signer: str,
        patient: str,
        grantee: str,
        purposes: list[str],
        scope: str,
        permit: bool,
    ) -> tuple[Any, Any]:
        signer = patient if signer == "self" else signer
        kind = "identity" if "." in grantee else "institution"
        actor = self.ids[grantee] if kind == "identity" else grantee
        pid = self.ids[patient]
        rec0 = self.records[0]
        extra: dict[str, Any] = {
            "any": {},
            "lab": {"types": ["lab"]},
            "rec0": {"record_ids": [rec0.record_id]} if rec0.patient == pid else {},
            "until": {"end_ms": now + 3000},  # covers this block and the next two
            "from": {"start_ms": now + 2000},  # from two blocks on
        }[scope]
        body = grant_body(pid, actor, sorted(purposes), kind=kind, permit=permit, **extra)
        stx = self.w.chain.tx(self.w[signer], GRANT_CONSENT, body)
        cid = consent_id_for(stx.hash)

        def check(res: Any) -> None:
            if not self._acting_for(signer, patient):
                assert res.code == "NOT_AUTHORIZED", res
            elif actor == pid:
                assert res.code == "TX_MALFORMED", res
            else:
                assert res.ok, res
                # a successful grant retires the patient's consents whose period ended
                for old_id, old in list(self.m.consents.items()):
                    if old.patient == pid and old.active and old.end_ms and old.end_ms <= now:
                        self.m.consents[old_id] = MConsent(**{**old.__dict__, "active": False})
                self.m.consents[cid] = MConsent(
                    consent_id=cid,
                    patient=pid,
                    kind=kind,
                    actor=actor,
                    purposes=frozenset(purposes),
                    record_ids=frozenset(body.record_ids),
                    types=frozenset(body.types),
                    start_ms=body.start_ms,
                    end_ms=body.end_ms,
                    permit=permit,
                )
                self.m.order.append(cid)

        return stx, check

    def _revoke(self, now: int, signer: str, index: int) -> tuple[Any, Any]:
        cid = self.m.order[index % len(self.m.order)] if self.m.order else "c" + "0" * 32
        if signer == "self":
            c = self.m.consents.get(cid)
            signer = self.names[c.patient] if c is not None else "alpha.patient"
        stx = self.w.chain.tx(self.w[signer], REVOKE_CONSENT, RevokeConsentBody(consent_id=cid))

        def check(res: Any) -> None:
            c = self.m.consents.get(cid)
            if c is None:
                assert res.code == "CONSENT_NOT_FOUND", res
                return
            signer_id = self.ids[signer]
            if signer_id != c.patient and not self.m.is_proxy(c.patient, signer_id):
                assert res.code == "NOT_AUTHORIZED", res
            elif not c.active:
                assert res.code == "CONSENT_INACTIVE", res
            else:
                assert res.ok, res
                self.m.consents[cid] = MConsent(**{**c.__dict__, "active": False})

        return stx, check

    def _referral_consented(self, patient: str, clinician: Identity, now: int) -> bool:
        any_record = RecordMeta(**{**_struct_dict(self.records[0]), "patient": patient})
        any_record = RecordMeta(
            **{**_struct_dict(any_record), "record_id": "", "type": "", "institution": ""}
        )
        return any(
            c.permit and m_matches(c, clinician.id, clinician.institution, any_record, p, now)
            for c in self.m.active_of(patient)
            for p in ("referral", "treatment")
        )

    def _care_start(self, now: int, signer: str, clinician: str, patient: str) -> tuple[Any, Any]:
        if signer == "@admin":  # the clinician's own admin
            signer = clinician.split(".")[0] + ".admin"
        body = CareBody(patient=self.ids[patient], clinician=self.ids[clinician], kind="admission")
        stx = self.w.chain.tx(self.w[signer], START_CARE, body)

        def check(res: Any) -> None:
            admin, doc, pat = self.who(signer), self.who(clinician), self.who(patient)
            # authorization first: only those who may start it learn that it exists
            if admin.role != "admin" or admin.institution != doc.institution:
                assert res.code == "NOT_AUTHORIZED", res
            elif doc.role != "clinician":
                assert res.code == "NOT_AUTHORIZED" and "not_a_clinician" in res.message, res
            elif pat.institution == admin.institution or self._referral_consented(pat.id, doc, now):
                if (pat.id, doc.id) in self.m.care:
                    assert res.code == "ALREADY_IN_CARE", res
                else:
                    assert res.ok, res
                    self.m.care.add((pat.id, doc.id))
            else:
                assert res.code == "NOT_AUTHORIZED" and "referral_needs_consent" in res.message

        return stx, check

    def _care_end(
        self, now: int, signer: str, clinician: str, patient: str, existing: bool, pick: int
    ) -> tuple[Any, Any]:
        if existing and self.m.care:
            pid, cid = sorted(self.m.care)[pick % len(self.m.care)]
            patient, clinician = self.names[pid], self.names[cid]
        if signer == "@admin":
            signer = clinician.split(".")[0] + ".admin"
        body = CareBody(patient=self.ids[patient], clinician=self.ids[clinician], kind="admission")
        stx = self.w.chain.tx(self.w[signer], END_CARE, body)

        def check(res: Any) -> None:
            admin, doc, pat = self.who(signer), self.who(clinician), self.who(patient)
            if (pat.id, doc.id) not in self.m.care:
                assert res.code == "NOT_IN_CARE", res
            elif admin.role != "admin" or admin.institution != doc.institution:
                assert res.code == "NOT_AUTHORIZED", res
            else:
                assert res.ok, res
                self.m.care.discard((pat.id, doc.id))

        return stx, check

    def _proxy(self, now: int, signer: str, proxy: str, active: bool) -> tuple[Any, Any]:
        body = SetProxyBody(proxy=self.ids[proxy], active=active)
        stx = self.w.chain.tx(self.w[signer], SET_PROXY, body)

        def check(res: Any) -> None:
            sender, target = self.who(signer), self.ids[proxy]
            current = self.m.proxies.setdefault(sender.id, set())
            if sender.role != "patient":
                assert res.code == "NOT_AUTHORIZED", res
            elif active and target == sender.id:
                assert res.code == "TX_MALFORMED", res
            elif active and self.who(proxy).role in NO_CONTENT_ROLES:
                assert res.code == "NOT_AUTHORIZED", res  # they would read content
            elif active and target in current:
                assert res.code == "ALREADY_PROXY", res
            elif not active and target not in current:
                assert res.code == "NOT_A_PROXY", res
            else:
                assert res.ok, res
                (current.add if active else current.discard)(target)

        return stx, check

    def _read(
        self, now: int, reader: str, index: int, purpose: str, break_glass: bool, pick: int
    ) -> tuple[Any, Any]:
        record = self.records[index]
        chosen: MConsent | None = None
        if reader == "@consent" and self.m.order:
            c = chosen = self.m.consents[self.m.order[pick % len(self.m.order)]]
            if c.kind == "identity":
                reader = self.names[c.actor]
            else:
                members = [n for n in (*CLINICIANS, "alpha.pharmacy") if n.startswith(c.actor)]
                reader = members[pick % len(members)]
            purpose = sorted(c.purposes)[pick % len(c.purposes)]
            own = [r for r in self.records if r.patient == c.patient]
            record = own[pick % len(own)] if own else record
        elif reader == "@care" and self.m.care:
            patient, clinician = sorted(self.m.care)[pick % len(self.m.care)]
            reader = self.names[clinician]
            own = [r for r in self.records if r.patient == patient]
            record = own[pick % len(own)] if own else record
        elif reader == "@consent":  # nothing granted yet: grant something instead
            grantee = GRANTEES[pick % len(GRANTEES)]
            return self._grant(now, "self", "alpha.patient", grantee, [purpose], "any", True)
        elif reader == "@care":  # nobody in care yet: start care instead
            doc = CLINICIANS[::-1][pick % len(CLINICIANS)]
            return self._care_start(now, "@admin", doc, "alpha.patient")
        body = ReadRecordBody(
            record_id=record.record_id,
            purpose=purpose,
            break_glass=break_glass,
            reason="emergency" if break_glass else "",
        )
        stx = self.w.chain.tx(self.w[reader], READ_RECORD, body)

        def check(res: Any) -> None:
            actor = self.who(reader)
            allowed, rule = model_decide(
                actor,
                record,
                purpose,
                in_care=(record.patient, actor.id) in self.m.care and actor.role == "clinician",
                is_proxy=self.m.is_proxy(record.patient, actor.id),
                consents=self.m.active_of(record.patient),
                now=now,
                break_glass=break_glass,
            )
            event(f"read: {rule}")
            assert res.code == ("OK" if allowed else "ACCESS_DENIED"), (res, rule)
            assert (res.data["outcome"], res.data["rule"]) == (
                "allowed" if allowed else "denied",
                rule,
            ), res
            if chosen is not None and not self.m.consents[chosen.consent_id].active:
                event("read by the grantee of a revoked consent")
            if rule == "consent":
                # the consent it names is one the model holds active: never a revoked one
                named = res.events[0].detail.rsplit("consent ", 1)[1]
                c = self.m.consents[named]
                assert c.active and c.permit
                assert m_matches(c, actor.id, actor.institution, record, purpose, now)

        return stx, check


def _struct_dict(value: Any) -> dict[str, Any]:
    return {f: getattr(value, f) for f in value.__struct_fields__}


@settings(PROPS, max_examples=250)
@given(
    st.lists(
        st.tuples(steps, st.sampled_from([True, False, False])),  # (step, starts a new block)
        min_size=8,
        max_size=30,
    )
)
def test_ledger_follows_the_reference_model(plan: list[tuple[tuple[Any, ...], bool]]) -> None:
    run = Run()
    blocks: list[list[tuple[Any, ...]]] = []
    for step, new_block in plan:
        if new_block or not blocks:
            blocks.append([])
        blocks[-1].append(step)
    for block in blocks:
        now = run.w.chain.time_ms + 1000  # the next block's time
        built = [run.build(step, now) for step in block]
        fin = run.w.chain.block([stx for stx, _ in built])
        assert run.w.chain.time_ms == now
        # results are checked in block order: the model steps as execution did
        for (_, check), res in zip(built, fin.results, strict=True):
            check(res)


def test_read_after_committed_revocation_is_denied_for_every_reader_kind() -> None:
    """The property's key case, deterministically: each kind of grantee loses access."""
    w = World()
    chain = w.chain
    deid = chain.register(w["alpha.service"], w["alpha.patient"], deidentified=True)
    rid = deid.data["record_id"]
    cases = [
        ("beta.clinician2", "beta.clinician2", "identity", "treatment"),
        ("beta.clinician", "beta", "institution", "referral"),
        ("alpha.researcher", "alpha.researcher", "identity", "research"),
        ("alpha.pharmacy", "alpha", "institution", "dispensing"),
    ]
    for reader, actor, kind, purpose in cases:
        actor_id = w[actor].id if kind == "identity" else actor
        body = grant_body(w["alpha.patient"].id, actor_id, [purpose], kind=kind)
        res = chain.run(w["alpha.patient"], GRANT_CONSENT, body)
        assert res.ok
        cid = res.data["consent_id"]
        assert chain.read(w[reader], rid, purpose).data["rule"] == "consent"
        assert chain.run(w["alpha.patient"], REVOKE_CONSENT, RevokeConsentBody(consent_id=cid)).ok
        res = chain.read(w[reader], rid, purpose)
        assert res.code == "ACCESS_DENIED" and res.data["rule"] != "consent", (reader, res)

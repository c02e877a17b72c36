"""Hospital patient identifiers linked to ledger patients (off chain, per institution).

A DICOM PatientID (an MRN) names a patient inside one hospital. The institution's
admin links it to the patient's ledger identity (``medledger patient link``); the
gateway files a received study under that patient. The table is the institution's
own, kept in ``<home>/dicom/patients.json`` (0600, replaced atomically), never on
chain::

    {"version": 1,
     "links": [{"mrn": "PAT-0001", "patient": "ml...", "added_by": "ml...",
                "added_ms": 1767225600000, "pseudonymous": false,
                "replaced_pseudonym": ""}]}

A PatientID that arrives before anyone linked it is filed under a **pseudonymous
patient** the gateway enrolls on chain (``patient.pseudonym``); its entry here says
``pseudonymous``. Linking the MRN later replaces that entry (keeping the pseudonym in
``replaced_pseudonym``) and the admin merges the pseudonym's records into the patient
on chain (``patient.merge``; ``medledger patient link`` does both).
"""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec

from medledger.crypto.keys import is_identity_id
from medledger.dicom.uids import patient_id_problem
from medledger.errors import Conflict, InvalidInput, NodeError
from medledger.fsutil import atomic_write

FORMAT_VERSION = 1
PATIENTS_FILE = Path("dicom") / "patients.json"


class PatientLink(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mrn: str
    patient: str
    added_by: str
    added_ms: int
    # a pseudonymous patient the gateway enrolled for a PatientID nobody linked yet
    pseudonymous: bool = False
    # the pseudonym this link replaced: its records are merged into ``patient``
    replaced_pseudonym: str = ""


class _LinkFile(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    links: list[PatientLink]


def link_json(link: PatientLink) -> dict[str, object]:
    return msgspec.to_builtins(link)  # type: ignore[no-any-return]


def validate_mrn(value: object) -> str:
    problem = patient_id_problem(value)
    if problem is not None:
        raise InvalidInput(f"{problem}: {value!r}"[:200], code="BAD_MRN")
    assert isinstance(value, str)
    return value


class PatientLinks:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._links = self._load()

    def _load(self) -> dict[str, PatientLink]:
        try:
            doc = msgspec.json.decode(self.path.read_bytes(), type=_LinkFile)
        except FileNotFoundError:
            return {}
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise NodeError(
                f"the patient links {self.path} are invalid: {exc}", code="DICOM_PATIENTS_INVALID"
            )
        if doc.version != FORMAT_VERSION or any(
            patient_id_problem(x.mrn) or not is_identity_id(x.patient) for x in doc.links
        ):
            raise NodeError(
                f"the patient links {self.path} are invalid", code="DICOM_PATIENTS_INVALID"
            )
        return {x.mrn: x for x in doc.links}

    def get(self, mrn: str) -> PatientLink | None:
        with self._lock:
            return self._links.get(mrn)

    def links(self) -> list[PatientLink]:
        with self._lock:
            return [self._links[m] for m in sorted(self._links)]

    def link(
        self, mrn: str, patient: str, *, added_by: str, now_ms: int
    ) -> tuple[PatientLink, bool]:
        """Link ``mrn`` to ``patient``; return the link and whether it is new.
        An MRN linked to another patient is refused (``MRN_IN_USE``)."""
        validate_mrn(mrn)
        if not is_identity_id(patient):
            raise InvalidInput("not a MedLedger identity ID", code="BAD_IDENTITY_ID")
        with self._lock:
            current = self._links.get(mrn)
            replaced = ""
            if current is not None:
                if current.patient == patient:
                    return current, False
                if not current.pseudonymous:
                    raise Conflict(f"MRN {mrn!r} is linked to {current.patient}", code="MRN_IN_USE")
                replaced = current.patient  # studies filed under a pseudonym so far
            entry = PatientLink(
                mrn=mrn,
                patient=patient,
                added_by=added_by,
                added_ms=now_ms,
                replaced_pseudonym=replaced,
            )
            self._save({**self._links, mrn: entry})
            return entry, True

    def add_pseudonym(self, mrn: str, pseudonym: str, *, added_by: str, now_ms: int) -> PatientLink:
        """File ``mrn`` under the pseudonymous patient the gateway just enrolled (an MRN
        someone linked meanwhile keeps its link: that one is returned)."""
        validate_mrn(mrn)
        with self._lock:
            current = self._links.get(mrn)
            if current is not None:
                return current
            entry = PatientLink(
                mrn=mrn, patient=pseudonym, added_by=added_by, added_ms=now_ms, pseudonymous=True
            )
            self._save({**self._links, mrn: entry})
            return entry

    def _save(self, links: dict[str, PatientLink]) -> None:
        doc = _LinkFile(version=FORMAT_VERSION, links=[links[m] for m in sorted(links)])
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.path, msgspec.json.format(msgspec.json.encode(doc)) + b"\n", mode=0o600)
        self._links = links

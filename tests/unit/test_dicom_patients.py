"""Patient links kept by the gateway: pseudonymous entries and their replacement."""

from __future__ import annotations

from pathlib import Path

import pytest

from medledger.crypto.keys import PrivateKey
from medledger.dicom.patients import PatientLinks
from medledger.errors import Conflict


def test_a_pseudonym_files_an_unlinked_mrn_until_a_real_link_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "dicom" / "patients.json"
    links = PatientLinks(path)
    pseudonym, patient, other, gw, admin = (PrivateKey.generate().id for _ in range(5))
    entry = links.add_pseudonym("MRN-9", pseudonym, added_by=gw, now_ms=1)
    assert entry.pseudonymous and entry.patient == pseudonym
    # a second study of the same MRN finds the same pseudonym
    assert links.add_pseudonym("MRN-9", other, added_by=gw, now_ms=2) == entry
    assert PatientLinks(path).get("MRN-9") == entry  # durable

    link, created = links.link("MRN-9", patient, added_by=admin, now_ms=3)
    assert created and not link.pseudonymous
    assert (link.patient, link.replaced_pseudonym) == (patient, pseudonym)
    # a real link is never replaced, by a pseudonym or another patient
    assert links.add_pseudonym("MRN-9", other, added_by=gw, now_ms=4) == link
    with pytest.raises(Conflict):
        links.link("MRN-9", other, added_by=admin, now_ms=5)
    assert PatientLinks(path).links() == [link]

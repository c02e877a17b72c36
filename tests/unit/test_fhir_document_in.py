"""An incoming DocumentReference as what MedLedger stores (fhir.document_in)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from medledger.crypto.keys import PrivateKey
from medledger.fhir.document_in import document_in
from medledger.fhir.outcome import Unprocessable

PATIENT = PrivateKey.generate().id
DATA = b"a referral letter"


def doc(**attachment: Any) -> dict[str, Any]:
    att = {"data": base64.b64encode(DATA).decode(), **attachment}
    return {
        "resourceType": "DocumentReference",
        "subject": {"reference": f"Patient/{PATIENT}"},
        "content": [{"attachment": att}],
    }


def test_inline_content_with_matching_size_and_hash_is_taken() -> None:
    sha1 = base64.b64encode(hashlib.sha1(DATA).digest()).decode()
    new = document_in(doc(size=len(DATA), hash=sha1, contentType="application/pdf"))
    assert (new.patient, new.record_type, new.data) == (PATIENT, "pdf", DATA)
    assert document_in(doc()).record_type == "document"
    typed = {**doc(), "type": {"coding": [{"system": "urn:medledger:record-type", "code": "lab"}]}}
    assert document_in(typed).record_type == "lab"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({**doc(), "subject": {"reference": "Patient/not-an-id"}}, "BAD_SUBJECT"),
        ({**doc(), "subject": {"reference": f"Group/{PATIENT}"}}, "BAD_SUBJECT"),
        ({**doc(), "content": []}, "UNSUPPORTED_FEATURE"),
        ({**doc(), "content": [doc()["content"][0]] * 2}, "UNSUPPORTED_FEATURE"),
        (doc(url="https://example.org/x"), "UNSUPPORTED_FEATURE"),
        (doc(data="not base64!"), "BAD_CONTENT"),
        (doc(data=""), "BAD_CONTENT"),
        (doc(size=1), "CONTENT_MISMATCH"),
        (doc(hash=base64.b64encode(b"\0" * 20).decode()), "CONTENT_MISMATCH"),
        (
            {**doc(), "type": {"coding": [{"system": "urn:medledger:record-type", "code": "X!"}]}},
            "BAD_RECORD_TYPE",
        ),
        (
            {
                **doc(),
                "type": {
                    "coding": [{"system": "urn:medledger:record-type", "code": "imaging-study"}]
                },
            },
            "BAD_RECORD_TYPE",
        ),
    ],
)
def test_what_cannot_be_stored_is_refused(body: dict[str, Any], code: str) -> None:
    with pytest.raises(Unprocessable) as err:
        document_in(body)
    assert err.value.code == code
    assert DATA.decode() not in err.value.message

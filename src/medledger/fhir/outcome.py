"""Errors as FHIR OperationOutcome: the HTTP status of the error, one issue whose
``details.coding`` carries MedLedger's stable error code."""

from __future__ import annotations

from typing import Any

from medledger.errors import InvalidInput, MedLedgerError
from medledger.fhir.models import emit

ERROR_CODE_SYSTEM = "urn:medledger:error-code"

_ISSUE_TYPE = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "business-rule",
    503: "transient",
}


class Unprocessable(InvalidInput):
    """Valid FHIR that MedLedger cannot carry out (an unsupported Consent provision)."""

    http_status = 422
    default_code = "UNSUPPORTED_FEATURE"


class NotSupported(InvalidInput):
    """An interaction the server does not implement (FHIR: 405)."""

    http_status = 405
    default_code = "METHOD_NOT_ALLOWED"


class UnsupportedMediaType(InvalidInput):
    http_status = 415
    default_code = "UNSUPPORTED_MEDIA_TYPE"


def operation_outcome(status: int, code: str, message: str) -> dict[str, Any]:
    severity = "error" if status < 500 else "fatal"
    return emit(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": severity,
                    "code": _ISSUE_TYPE.get(status, "exception"),
                    "details": {
                        "coding": [{"system": ERROR_CODE_SYSTEM, "code": code}],
                        "text": message,
                    },
                    "diagnostics": message,
                }
            ],
        }
    )


def outcome_for(exc: MedLedgerError) -> dict[str, Any]:
    return operation_outcome(exc.http_status, exc.code, exc.message)

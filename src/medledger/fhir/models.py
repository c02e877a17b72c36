"""Validation with ``fhir.resources``: every resource out and in goes through its model.

We use the package's R4B models (``fhir.resources.R4B``, pydantic v2): R4B is a
technical correction of R4 (4.0.1) that left Patient, Consent, AuditEvent,
Provenance, ImagingStudy, DocumentReference, Bundle, OperationOutcome and
CapabilityStatement unchanged in what we emit. The package's default models are R5,
which changed several of them (AuditEvent, Consent): not what R4 clients expect.
"""

from __future__ import annotations

import json
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from medledger.errors import InvalidInput

FHIR_VERSION = "4.0.1"
MEDIA_TYPE = "application/fhir+json"
MAX_PROBLEMS = 5


def emit(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` validated by its model (by ``resourceType``), as FHIR JSON.

    A failure here is a bug of ours, not of the caller: it raises ``ValueError``."""
    model = get_fhir_model_class(str(data["resourceType"])).model_validate(data)
    out: dict[str, Any] = json.loads(model.model_dump_json())
    return out


def parse(raw: bytes, resource_type: str) -> dict[str, Any]:
    """An incoming resource: JSON, of ``resource_type``, valid for its model.

    Errors (``INVALID_JSON``, ``WRONG_RESOURCE_TYPE``, ``INVALID_RESOURCE``) name the
    failing element paths and error kinds only, never the values sent (patient data)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the body is not JSON", code="INVALID_JSON")
    if not isinstance(doc, dict):
        raise InvalidInput("the body must be a JSON object (a FHIR resource)", code="INVALID_JSON")
    got = doc.get("resourceType")
    if got != resource_type:
        raise InvalidInput(f"expected resourceType {resource_type}", code="WRONG_RESOURCE_TYPE")
    try:
        model = get_fhir_model_class(resource_type).model_validate(doc)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or resource_type}: {e['type']}"
            for e in exc.errors(include_input=False, include_url=False)[:MAX_PROBLEMS]
        ]
        raise InvalidInput(
            f"not a valid FHIR R4 {resource_type}: " + "; ".join(problems),
            code="INVALID_RESOURCE",
        )
    except (ValueError, TypeError):
        raise InvalidInput(f"not a valid FHIR R4 {resource_type}", code="INVALID_RESOURCE")
    out: dict[str, Any] = json.loads(model.model_dump_json())
    return out

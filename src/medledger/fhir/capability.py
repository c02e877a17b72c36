"""The CapabilityStatement at ``/fhir/metadata``: exactly what is implemented."""

from __future__ import annotations

from typing import Any

from medledger import __version__
from medledger.fhir.models import FHIR_VERSION, emit

_PARAM_TYPES = {
    "_id": "token",
    "identifier": "token",
    "patient": "reference",
    "subject": "reference",
    "type": "token",
    "date": "date",
    "started": "date",
    "status": "token",
    "target": "reference",
}

# resource -> (interactions, search parameters)
RESOURCES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Patient": (("read", "search-type", "create"), ("_id", "identifier")),
    "DocumentReference": (
        ("read", "search-type", "create"),
        ("_id", "patient", "subject", "type", "date"),
    ),
    "ImagingStudy": (
        ("read", "search-type"),
        ("_id", "patient", "subject", "identifier", "started"),
    ),
    "Consent": (("read", "search-type", "create", "delete"), ("_id", "patient", "status")),
    "AuditEvent": (("read", "search-type"), ("patient", "date")),
    "Provenance": (("read", "search-type"), ("target",)),
    "Binary": (("read",), ()),
}


def capability_statement(base_url: str, published_ms_iso: str) -> dict[str, Any]:
    resources = [
        {
            "type": name,
            "interaction": [{"code": code} for code in interactions],
            "searchParam": [{"name": p, "type": _PARAM_TYPES[p]} for p in params],
            "versioning": "no-version",
            "readHistory": False,
            "updateCreate": False,
        }
        for name, (interactions, params) in RESOURCES.items()
    ]
    for r in resources:
        if not r["searchParam"]:
            del r["searchParam"]
    return emit(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": published_ms_iso,
            "kind": "instance",
            "software": {"name": "MedLedger", "version": __version__},
            "implementation": {"description": "MedLedger node FHIR API", "url": base_url},
            "fhirVersion": FHIR_VERSION,
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "security": {
                        "cors": False,
                        "description": "Authorization: Bearer <token> (medledger token issue) "
                        "or MedLedger signed requests; results hold only what the caller "
                        "may see under the ledger's access policy",
                    },
                    "resource": resources,
                }
            ],
        }
    )

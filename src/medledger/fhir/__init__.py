"""HL7 FHIR R4 under ``/fhir`` (issue 7): MedLedger objects as FHIR resources.

Pure mappings (:mod:`.resources`, :mod:`.consent_in`), search parameters
(:mod:`.search`), errors as OperationOutcome (:mod:`.outcome`) and the
CapabilityStatement (:mod:`.capability`); the routes are in
:mod:`medledger.api.fhir_routes`. Every resource emitted or accepted is validated
with ``fhir.resources`` (its R4B models, which are R4-compatible for the resources
served here; see docs/fhir.md).
"""

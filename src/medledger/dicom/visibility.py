"""Which indexed records an identity may see the metadata of (C-FIND, QIDO-RS, FHIR).

The same rule as the API's record metadata (``visible_record`` in :mod:`medledger.api.app`):
:func:`medledger.app.access.may_view_metadata` with the facts
:func:`medledger.app.consents.read_facts` gathers from committed state. A service
therefore sees its institution's records, a clinician those of patients in its care
or who consented, a patient its own. Erased records are never visible, to anyone.

It reads the node's committed state: call it on the node's event loop (the DICOM
gateway hands it there from pynetdicom's threads).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from medledger.app import access, consents
from medledger.app.model import Identity

if TYPE_CHECKING:
    from medledger.node.node import Node


def visible_record_ids(node: Node, identity: Identity, record_ids: Iterable[str]) -> set[str]:
    """The IDs among ``record_ids`` whose metadata ``identity`` may see now."""
    view = node.app.committed_view()
    now = node.last_header.time_ms if node.last_header else 0
    facts_by_patient: dict[str, access.ReadFacts] = {}
    visible: set[str] = set()
    for record_id in record_ids:
        meta = node.app.query_record(record_id)
        if meta is None or meta.erased_height:
            continue
        facts = facts_by_patient.get(meta.patient)
        if facts is None:
            facts = facts_by_patient[meta.patient] = consents.read_facts(view, identity, meta)
        if access.may_view_metadata(identity, meta, facts, now):
            visible.add(record_id)
    return visible

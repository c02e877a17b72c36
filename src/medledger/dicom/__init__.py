"""DICOM interfaces of a node.

A DICOM SCP (pynetdicom) that answers C-ECHO and C-STORE to calling AE titles an
institution admin has mapped to one of its ``service`` identities, and stores each
received study as one record, signed by the node's gateway key (ADR 0008).

* :mod:`.aetitle`: AE title validation, and the default AE title of a node;
* :mod:`.allowlist`: the off-chain map of calling AE titles to identities
  (``<home>/dicom/allowed_aes.json``);
* :mod:`.scp`: the association acceptor (pynetdicom), which knows nothing of the ledger;
* :mod:`.gateway`: the node's DICOM side, deciding each association against the
  allow-list and the committed state, spooling and sealing studies;
* :mod:`.gatewaykey`: the node's gateway key (``<home>/dicom/gateway.key``);
* :mod:`.spool`: received instances, durable before C-STORE answers;
* :mod:`.patients`: DICOM PatientIDs / MRNs linked to ledger patients (off chain);
* :mod:`.uids`: UID and PatientID validation.

Only :mod:`.scp` and :mod:`.gateway` import pynetdicom, so the CLI and the
configuration do not pay for it.
"""

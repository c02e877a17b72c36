"""DICOM interfaces of a node.

This slice: a DICOM SCP (pynetdicom) that answers C-ECHO to calling AE titles an
institution admin has mapped to one of its ``service`` identities.

* :mod:`.aetitle`: AE title validation, and the default AE title of a node;
* :mod:`.allowlist`: the off-chain map of calling AE titles to identities
  (``<home>/dicom/allowed_aes.json``);
* :mod:`.scp`: the association acceptor (pynetdicom), which knows nothing of the ledger;
* :mod:`.gateway`: the node's DICOM side, deciding each association against the
  allow-list and the committed state.

Only :mod:`.scp` and :mod:`.gateway` import pynetdicom, so the CLI and the
configuration do not pay for it.
"""

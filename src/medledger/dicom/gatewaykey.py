"""The node's DICOM gateway key: the ``service`` identity that writes for DICOM peers.

Modalities cannot sign. The node holds one key per institution node,
``<home>/dicom/gateway.key`` (mode 0600), created by ``medledger init`` and ``join``
or at the node's first start. The institution's admin enrolls it as a ``service``
identity (``medledger identity enroll --role service --id GATEWAY_ID``); until then
studies received by C-STORE stay in the spool (ADR 0008).
"""

from __future__ import annotations

from pathlib import Path

from medledger.crypto.keys import PrivateKey, load_key_file, save_key_file
from medledger.errors import InvalidInput

GATEWAY_KEY_FILE = Path("dicom") / "gateway.key"


def ensure_gateway_key(home: Path) -> PrivateKey:
    """The gateway key of the node at ``home``, created (0600) if it does not exist yet."""
    path = home / GATEWAY_KEY_FILE
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            save_key_file(path, PrivateKey.generate())
        except InvalidInput as exc:  # created concurrently
            if exc.code != "KEY_FILE_EXISTS":
                raise
    return load_key_file(path)


def gateway_id(home: Path) -> str | None:
    """The gateway identity ID of the node at ``home``, None without a key yet."""
    path = home / GATEWAY_KEY_FILE
    if not path.exists():
        return None
    return load_key_file(path).id

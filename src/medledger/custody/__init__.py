"""Key custody: data keys are released only for committed, allowed access events."""

from medledger.custody.gate import AccessProof, check_release
from medledger.custody.local import LocalCustodian

__all__ = ["AccessProof", "LocalCustodian", "check_release"]

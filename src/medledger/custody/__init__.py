"""Key custody: Shamir shares of data keys, released only for committed, allowed reads."""

from medledger.custody.gate import AccessProof, check_decision, check_release
from medledger.custody.local import LocalCustodian
from medledger.custody.shamir import KeyShare, combine_key, split_key

__all__ = [
    "AccessProof",
    "KeyShare",
    "LocalCustodian",
    "check_decision",
    "check_release",
    "combine_key",
    "split_key",
]

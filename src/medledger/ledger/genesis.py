"""Genesis: the chain's first state, written once by ``medledger init``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec

from medledger.codec import Record, encode
from medledger.crypto.keys import identity_id_for
from medledger.errors import InvalidInput
from medledger.ledger.block import Validator


class InstitutionGenesis(Record, frozen=True):
    name: str
    admin_id: str
    admin_public_key: bytes


class ChainParams(Record, frozen=True):
    max_tx_bytes: int = 64 * 1024
    max_block_txs: int = 5000
    max_block_bytes: int = 8 * 1024 * 1024  # leaves room under p2p's 16 MiB frame
    max_mempool_txs: int = 50000
    max_mempool_bytes: int = 128 * 1024 * 1024
    access_grant_ttl_ms: int = 10 * 60 * 1000
    storage_audit_epoch: int = 20  # blocks between storage audits
    storage_audit_challenges: int = 16  # shards challenged per audit
    # key shares needed: at least num/den of a record's custodians (a 2/3 majority: 3 of 4)
    custody_threshold_num: int = 2
    custody_threshold_den: int = 3
    access_spike_reads: int = 50  # reads by one identity per window that raise an alert
    access_spike_window_ms: int = 60 * 60 * 1000  # the spike window (block time)


class Genesis(Record, frozen=True):
    chain_id: str
    genesis_time_ms: int
    institutions: list[InstitutionGenesis]
    validators: list[Validator]
    params: ChainParams

    def hash(self) -> bytes:
        return hashlib.sha256(encode(self)).digest()


def genesis_to_json(genesis: Genesis) -> str:
    doc: dict[str, Any] = {
        "chain_id": genesis.chain_id,
        "genesis_time_ms": genesis.genesis_time_ms,
        "institutions": [
            {"name": i.name, "admin_id": i.admin_id, "admin_public_key": i.admin_public_key.hex()}
            for i in genesis.institutions
        ],
        "validators": [
            {"name": v.name, "id": v.id, "public_key": v.public_key.hex(), "power": v.power}
            for v in genesis.validators
        ],
        "params": msgspec.structs.asdict(genesis.params),
    }
    return json.dumps(doc, indent=2) + "\n"


def load_genesis(path: Path) -> Genesis:
    try:
        doc = json.loads(path.read_text())
        genesis = Genesis(
            chain_id=str(doc["chain_id"]),
            genesis_time_ms=int(doc["genesis_time_ms"]),
            institutions=[
                InstitutionGenesis(
                    name=i["name"],
                    admin_id=i["admin_id"],
                    admin_public_key=bytes.fromhex(i["admin_public_key"]),
                )
                for i in doc["institutions"]
            ],
            validators=[
                Validator(
                    name=v["name"],
                    id=v["id"],
                    public_key=bytes.fromhex(v["public_key"]),
                    power=int(v["power"]),
                )
                for v in doc["validators"]
            ],
            params=_params(doc.get("params", {})),
        )
        _check(genesis)
        return genesis
    except FileNotFoundError:
        raise InvalidInput(f"genesis file {path} not found", code="GENESIS_NOT_FOUND")
    except (KeyError, ValueError, TypeError, msgspec.ValidationError) as exc:
        raise InvalidInput(f"genesis file {path} is invalid: {exc}", code="GENESIS_INVALID")


def _check(genesis: Genesis) -> None:
    """Every ID must be the one its public key derives; names and IDs unique."""
    for inst in genesis.institutions:
        if identity_id_for(inst.admin_public_key) != inst.admin_id:
            raise ValueError(f"institution {inst.name}: admin_id does not match its public key")
    for val in genesis.validators:
        if identity_id_for(val.public_key) != val.id:
            raise ValueError(f"validator {val.name}: id does not match its public key")
        if val.power <= 0:
            raise ValueError(f"validator {val.name}: power must be positive")
    names = [i.name for i in genesis.institutions]
    ids = [v.id for v in genesis.validators]
    if len(set(names)) != len(names) or len(set(ids)) != len(ids):
        raise ValueError("institution names and validator IDs must be unique")
    if not genesis.validators:
        raise ValueError("genesis names no validator")


def _params(doc: dict[str, Any]) -> ChainParams:
    fields = set(ChainParams.__struct_fields__)
    unknown = set(doc) - fields
    if unknown:
        raise ValueError(f"unknown chain parameters {sorted(unknown)}")
    values = {k: int(v) for k, v in doc.items()}
    if any(v <= 0 for v in values.values()):
        raise ValueError("chain parameters must be positive")
    return ChainParams(**values)

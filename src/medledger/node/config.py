"""Node configuration (``<home>/config.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from medledger.dicom.aetitle import ae_title_problem, default_ae_title
from medledger.errors import InvalidInput
from medledger.storage.s3backend import S3Config


class PeerConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    id: str
    public_key: str  # hex Ed25519 node key
    host: str
    port: int
    api_url: str = ""  # its API (and shard service), e.g. http://10.0.0.2:8700


class DicomConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The node's DICOM listener (SCP); ``port`` 0 or null disables it."""

    host: str = "127.0.0.1"
    port: int | None = None
    ae_title: str = ""  # empty: derived from the node's name (hospital-a: HOSPITAL-A)
    # C-STORE: a study is stored as one record once no instance arrived for quiet_s
    # (and its associations are closed); a study that could not be stored is retried
    # every retry_s; an instance over max_instance_bytes is refused (0xA700)
    quiet_s: float = 5.0
    retry_s: float = 30.0
    max_instance_bytes: int = 512 * 1024 * 1024


class NodeConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    chain_id: str
    api_host: str = "127.0.0.1"
    api_port: int = 0
    genesis_file: str = "genesis.json"
    node_key_file: str = "node.key"
    data_dir: str = "data"
    min_block_interval_ms: int = 0
    empty_block_interval_ms: int | None = None
    log_level: str = "info"
    request_max_skew_ms: int = 300_000
    p2p_host: str = "127.0.0.1"
    p2p_port: int = 0
    peers: list[PeerConfig] = msgspec.field(default_factory=list)
    timeout_propose_ms: int = 1000
    timeout_vote_ms: int = 500
    timeout_delta_ms: int = 500
    shards_dir: str = "shards"  # the local shard backend, under the node's home
    s3: S3Config | None = None  # shards in an S3-compatible store instead
    storage_audits: bool = (
        True  # run the epoch audits this node is chosen for, and repair after reads
    )
    dicom: DicomConfig | None = None  # the DICOM listener; None (or port 0): none

    def dicom_ae_title(self) -> str:
        """The AE title this node answers to: configured, or derived from its name."""
        if self.dicom is not None and self.dicom.ae_title:
            return self.dicom.ae_title
        return default_ae_title(self.name)

    def dicom_port(self) -> int:
        """The DICOM listener's port, 0 when there is none."""
        return (self.dicom.port or 0) if self.dicom is not None else 0

    def dicom_listener(self) -> dict[str, Any] | None:
        """``{"host", "port", "ae_title"}`` of the DICOM listener, None without one."""
        if self.dicom is None or not self.dicom_port():
            return None
        return {
            "host": self.dicom.host,
            "port": self.dicom_port(),
            "ae_title": self.dicom_ae_title(),
        }

    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"


def config_path(home: Path) -> Path:
    return home / "config.json"


def load_config(home: Path) -> NodeConfig:
    path = config_path(home)
    try:
        config = msgspec.json.decode(path.read_bytes(), type=NodeConfig)
    except FileNotFoundError:
        raise InvalidInput(f"no node configuration at {path}", code="CONFIG_NOT_FOUND")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidInput(f"node configuration {path} is invalid: {exc}", code="CONFIG_INVALID")
    for peer in config.peers:
        try:
            key = bytes.fromhex(peer.public_key)
        except ValueError:
            key = b""
        if len(key) != 32 or not 1 <= peer.port <= 65535:
            raise InvalidInput(
                f"node configuration {path}: peer {peer.name} needs a 32-byte hex public_key "
                "and a port 1..65535",
                code="CONFIG_INVALID",
            )
    if not 1 <= config.api_port <= 65535:
        raise InvalidInput(
            f"node configuration {path}: api_port must be 1..65535", code="CONFIG_INVALID"
        )
    if config.min_block_interval_ms < 0 or (
        config.empty_block_interval_ms is not None and config.empty_block_interval_ms <= 0
    ):
        raise InvalidInput(
            f"node configuration {path}: block intervals must be positive", code="CONFIG_INVALID"
        )
    if config.dicom is not None:
        port = config.dicom.port or 0
        if not 0 <= port <= 65535 or not config.dicom.host:
            raise InvalidInput(
                f"node configuration {path}: dicom needs a host and a port 0..65535 "
                "(0 disables the listener)",
                code="CONFIG_INVALID",
            )
        d = config.dicom
        if not (0 < d.quiet_s <= 86400 and 0 < d.retry_s <= 86400 and d.max_instance_bytes > 0):
            raise InvalidInput(
                f"node configuration {path}: dicom needs quiet_s and retry_s in (0, 86400] "
                "and a positive max_instance_bytes",
                code="CONFIG_INVALID",
            )
        problem = config.dicom.ae_title and ae_title_problem(config.dicom.ae_title)
        if problem:
            raise InvalidInput(
                f"node configuration {path}: dicom.ae_title {config.dicom.ae_title!r}: "
                f"{problem} (1-16 printable ASCII characters, no backslash, no leading or "
                "trailing space)",
                code="CONFIG_INVALID",
            )
    return config


def save_config(home: Path, config: NodeConfig) -> None:
    home.mkdir(parents=True, exist_ok=True)
    data = json.loads(msgspec.json.encode(config))
    config_path(home).write_text(json.dumps(data, indent=2) + "\n")

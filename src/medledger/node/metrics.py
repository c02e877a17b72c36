"""Prometheus metrics of one node (its own registry, served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("medledger_height", "Height of the last committed block", registry=r)
        self.txs_committed = Counter(
            "medledger_txs_committed_total", "Transactions committed in blocks", registry=r
        )
        self.tx_rejected = Counter(
            "medledger_tx_rejected_total",
            "Transactions rejected at admission",
            ["code"],
            registry=r,
        )
        self.mempool_txs = Gauge("medledger_mempool_txs", "Transactions waiting", registry=r)
        self.block_seconds = Histogram(
            "medledger_block_seconds",
            "Time to execute and durably commit a block",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.block_txs = Histogram(
            "medledger_block_txs",
            "Transactions per block",
            registry=r,
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000),
        )
        self.bytes_stored = Counter(
            "medledger_storage_bytes_stored_total", "Encrypted bytes written", registry=r
        )
        self.bytes_served = Counter(
            "medledger_storage_bytes_served_total", "Encrypted bytes read", registry=r
        )
        self.key_releases = Counter(
            "medledger_custody_releases_total", "Key releases by outcome", ["outcome"], registry=r
        )

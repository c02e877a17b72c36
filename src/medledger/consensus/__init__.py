"""Consensus: the Tendermint algorithm as a pure state machine (``tendermint``),
validator sets with weighted round-robin proposers (``validators``), BFT time
(``bfttime``) and the write-ahead log format (``wal``). The asyncio driver lives
in ``medledger.node.driver``; consensus never imports the medical modules."""

"""Consensus. Issue 3 ships the single-validator proposer core (``solo``); the
Tendermint core for a consortium replaces it behind the same driver contract."""

"""MedLedger: a consortium blockchain for sharing medical records and images safely."""

__version__ = "0.1.0"

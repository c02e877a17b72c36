"""The ``medledger`` command line (Typer + Rich)."""

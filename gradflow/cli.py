"""gradflow.cli (being written)."""

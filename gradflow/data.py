"""gradflow.data (being written)."""

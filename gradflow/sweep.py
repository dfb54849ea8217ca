"""gradflow.sweep (being written)."""

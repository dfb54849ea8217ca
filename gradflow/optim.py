"""gradflow.optim (being written)."""

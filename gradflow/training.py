"""gradflow.training (being written)."""

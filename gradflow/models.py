"""gradflow.models (being written)."""

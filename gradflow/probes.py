"""gradflow.probes (being written)."""

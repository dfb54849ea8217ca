"""gradflow.meanfield (being written)."""

"""gradflow.analytic (being written)."""

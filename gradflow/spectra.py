"""gradflow.spectra (being written)."""

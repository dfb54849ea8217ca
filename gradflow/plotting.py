"""gradflow.plotting (being written)."""

"""One module per hub behind one small interface (see base.py)."""

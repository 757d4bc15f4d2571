"""One module per ``cryogan`` sub-command (the click group lives in ``cryogan_core.cli``)."""

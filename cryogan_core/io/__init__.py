"""Input/output: RELION STAR particle tables, MRC maps and particle stacks, atomic writes."""

"""Stage 3 of the flow, after a run: the ledger (ledger), repeats of one run (repeats), the
keep/discard verdict (verdict) and the checks pi-autoresearch runs (checks). Imports from
data/ and measure/ only."""

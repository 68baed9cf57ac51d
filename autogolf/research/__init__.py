"""What the harness makes of the runs in the ledger: the training budget a run gets
(budget.py), repeats of one run with different seeds (repeats.py), the keep/discard verdict
against the best comparable kept run (verdict.py), the progress report (report.py) and the
proxy's measured fidelity (calibrate.py)."""

"""Offline tools over many runs: the progress report (report) and the proxy's measured
fidelity (calibrate). Not on a run's path; may import every stage."""

"""The agent loop: installing pi, launching it, the libtmux supervisor that keeps it alive,
and the status screen. Data flow: ledger (logs/runs.jsonl) -> agent (pi + pi-autoresearch)."""

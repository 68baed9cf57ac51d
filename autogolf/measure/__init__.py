"""Stage 2 of the flow, from the trainer's log to METRIC lines: the log parser (logparse),
the metrics and their METRIC lines (metrics), and the harness's own score of the artifact
(score, with its byte table in bytecount). Imports from data/ only."""

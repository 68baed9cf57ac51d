"""The orchestrator behind `bash autoresearch.sh` (`python -m autogolf.run`), with what one
run needs: profiles and the training budget, the machine-wide lock (runlock), the optimized
BLAS (blas), several processes (distributed) and bounded storage (storage). It drives the
stages in order: data -> trainer -> measure -> judge."""

# autogolf tasks. `just` comes from PyPI (rust-just) into .venv/bin by scripts/setup.sh.
# Data flow: data cache -> trainer -> log -> measure -> METRIC lines -> ledger -> verdict -> agent.

set shell := ["bash", "-euo", "pipefail", "-c"]

py := ".venv/bin/python"

# list the recipes
default:
    @{{just_executable()}} --list --justfile {{justfile()}}

# install tmux, the Python environment (uv.lock) and an optimized BLAS; idempotent
setup:
    bash scripts/setup.sh

# fetch upstream parameter-golf (pinned) and its sp1024 cache; offline default without network
bootstrap *ARGS:
    bash scripts/bootstrap-parameter-golf.sh {{ARGS}}

# build a data cache from local documents (.jsonl / .parquet / .txt, or a folder of them)
corpus SRC *ARGS:
    {{py}} -m autogolf.data.corpus "{{SRC}}" {{ARGS}}

# check that the tokenizer, shards and manifest agree; print token counts per split
verify-data *ARGS:
    {{py}} -m autogolf.data.cache_cli verify {{ARGS}}

# the cheap proxy benchmark the agent runs by default
breadth:
    PROFILE=breadth bash autoresearch.sh

# a stronger proxy: more training and more validation
confirm:
    PROFILE=confirm bash autoresearch.sh

# the whole validation split
full:
    PROFILE=full bash autoresearch.sh

# install the agent into the project: Node >= 22.19, pi and pi-autoresearch (pinned by agent/package-lock.json)
setup-agent:
    bash scripts/setup-agent.sh

# start the agent loop (pi + pi-autoresearch, kept alive by a supervisor) in a detached tmux session
autoresearch:
    {{py}} -m autogolf.agent.loop start

# watch the loop: attach to its tmux session (detach with Ctrl-b d)
attach:
    {{py}} -m autogolf.agent.loop attach

# end the loop; a running benchmark finishes and is recorded (--kill-benchmark, --no-wait)
stop *ARGS:
    {{py}} -m autogolf.agent.loop stop {{ARGS}}

# one screen: the agent, the benchmark running now, the last runs and the best per profile
status *ARGS:
    @{{py}} -m autogolf.agent.status {{ARGS}}

# install the agent, then run the whole test suite and print its 25 slowest tests (tiny models; the real fixtures in ../shared/fixtures when present, else stand-ins)
test *ARGS:
    bash scripts/run-tests.sh {{ARGS}}

# the fast tier: pure logic, no trainer process, tmux, pi or npm (under a minute; tests/conftest.py marks the rest `integration`)
test-fast *ARGS:
    {{py}} -m pytest -m "not integration" {{ARGS}}

# every AUTOGOLF_* variable: its default, what it does, who reads it, and any value set now
settings:
    @{{py}} -m autogolf.settings

# the trainer's diff against upstream's train_gpt_mlx.py at the pinned commit (works offline: upstream's file is in this repo's git history); --upstream prints upstream's file
upstream-diff *ARGS:
    @{{py}} -m autogolf.measure.upstream {{ARGS}}

# how much of upstream's trainer ours keeps: code lines kept verbatim in order, missing names, diff size, bytes
upstream-fidelity *ARGS:
    @{{py}} scripts/upstream_fidelity.py {{ARGS}}

# trainer throughput: FLOPs/token, tok/s, GFLOP/s vs a measured sgemm peak (and upstream if present)
bench-trainer *ARGS:
    {{py}} scripts/bench_trainer.py {{ARGS}}

# 1 process vs N data-parallel processes (mlx.launch) vs main's trainer: losses, val_bpb, tok/s
bench-distributed *ARGS:
    {{py}} scripts/bench_distributed.py {{ARGS}}

# what the trainer's sandbox costs per start (plain vs each mechanism) and as a share of a breadth run
bench-sandbox *ARGS:
    {{py}} scripts/bench_sandbox.py {{ARGS}}

# corpus import throughput in MB of text per second
bench-corpus *ARGS:
    {{py}} scripts/bench_corpus.py {{ARGS}}

# which BLAS MLX uses, with a measured fp32 matmul GFLOP/s
blas:
    {{py}} -m autogolf.run.blas

# does the trainer's sandbox work here: its mechanism, a tiny MLX program inside it, its start-up cost
doctor:
    @{{py}} -m autogolf.lab.doctor

# the run ledger (logs/runs.jsonl)
ledger *ARGS:
    {{py}} -m autogolf.judge.ledger {{ARGS}}

# progress: a table per profile, logs/progress.png and logs/report.html
report *ARGS:
    {{py}} -m autogolf.lab.report {{ARGS}}

# how well breadth's token budget ranks ideas (Spearman vs a longer run); --quick: only re-size breadth to this machine by the probe; writes logs/machine.json
calibrate *ARGS:
    {{py}} -m autogolf.lab.calibrate {{ARGS}}

# the checks pi-autoresearch runs after a successful benchmark
checks:
    bash autoresearch.checks.sh

# re-record the hashes of the protected files (after a deliberate harness or data change)
protect:
    {{py}} -m autogolf.judge.checks --protect

# the loop under faults for MINUTES (real pi, scripted model, smoke profile): report and `just status` transcripts in /tmp/autogolf-soak-*
soak MINUTES="25" *ARGS:
    {{py}} scripts/soak.py {{MINUTES}} {{ARGS}}

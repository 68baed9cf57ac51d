"""Data parallelism for upstream's trainer, kept outside it.

`NPROC=2 bash autoresearch.sh` (or HOSTS=...) starts benchmark/train_gpt_mlx.py once per rank
through mlx.launch (run/distributed.py). Upstream's file is one process and knows nothing of
ranks; its harness hook (cpu_speed.install, on every backend) calls `install` here first, and
in a rank of a group of two or more this module makes the N copies train ONE model:

  - the batch: mx.compile is wrapped so that a model-bound function (compiled with `inputs=`,
    as upstream compiles its loss and its loss-and-gradient) called on a batch of token ids
    (x, y) runs on this rank's contiguous slice of the rows, weighted by the slice's share of
    the rows, and the ranks' outputs (the loss and the whole gradient tree) are summed over
    the group (RankSplit). Every rank reads the same global batch (same files, same order),
    gets the whole batch's mean loss and gradients, takes the same optimizer step, so the
    weights stay identical on every rank. Evaluation splits the same way. On a CPU the
    stream split (cpu_speed.RowSplit) runs inside each rank's slice.
  - the clock: under a wall-clock cap, upstream's LR schedule and its stop decision read
    time.perf_counter(). Each rank's own clock would let them take different LRs or stop at
    different steps, and a rank left alone in a collective waits forever. The trainer's `time`
    is replaced by one whose perf_counter is rank 0's (RankZeroClock).
  - the output: rank 0 writes the log and the artifact into OUT_DIR as one process would;
    every other rank gets a private OUT_DIR under its TMPDIR and its stdout goes to a file
    there, so the harness's console (which reads step lines as they come) sees each line once.
    The ranks' copies of the weights are removed when they exit.
  - the cores: cpu_speed gives each rank its share of this machine's cores (local_ranks).

Why not in the trainer: these edits sit in the very lines records change (the loss-and-grad
loop, eval_val, the training loop); made there, record diffs would stop applying. Here the
trainer file stays upstream's text. A trainer that calls mx.distributed.init() itself does its
own data parallelism, and this module then does nothing.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

_STATE: dict = {}  # "world": the group; "local_ranks": ranks on this host; "compile": MLX's mx.compile
ROW_MEAN_RTOL = 1e-3


def install(module_name: str = ""):
    """Join the group mlx.launch started and set the rank up (module docstring). Returns the
    group, or None (nothing done) for one process or a trainer that does its own parallelism.
    Runs before the trainer's Hyperparameters class reads OUT_DIR from the environment."""
    if "MLX_RANK" not in os.environ:  # mlx.launch sets it on every rank, whatever the backend
        return None
    if _trainer_does_its_own(module_name):
        return None
    import mlx.core as mx

    world = mx.distributed.init()
    if world.size() == 1:
        return None
    _STATE["world"] = world
    _STATE["local_ranks"] = _ranks_on_this_host(world)
    if world.rank() > 0:
        _private_output(world.rank())
    clock = _wall_clock_capped() and _share_clock(world, module_name)
    print(f"data_parallel: world_size:{world.size()} ranks_on_this_host:{_STATE['local_ranks']} "
          f"rank_split:autogolf.run.data_parallel clock:{'rank0' if clock else 'own'} "
          f"(ranks > 0 write to their TMPDIR)", flush=True)
    return world


def local_ranks() -> int:
    """How many ranks of the run share this machine's cores (1 outside a group)."""
    return _STATE.get("local_ranks", 1)


def _trainer_does_its_own(module_name: str) -> bool:
    from autogolf.run.distributed import joins_group_itself

    path = getattr(sys.modules.get(module_name), "__file__", None)
    try:
        return bool(path) and joins_group_itself(Path(path).read_text(encoding="utf-8"))
    except OSError:
        return False


def _ranks_on_this_host(world) -> int:
    import mlx.core as mx

    me = zlib.crc32(os.uname().nodename.encode()) & 0x7FFFFFFF
    hosts = mx.distributed.all_gather(mx.array([me], dtype=mx.int32), group=world).tolist()
    return max(1, sum(1 for h in hosts if h == me))


# --------------------------------------------------------------------------- output of ranks > 0

def _private_output(rank: int) -> None:
    """OUT_DIR and stdout of a rank > 0 into a folder of its own (removed at a clean exit; on an
    uncaught exception its log and stdout stay, and stderr, which reaches the console, says where;
    a killed rank's folder goes at the next data-parallel run on this machine)."""
    _sweep_dead_ranks(Path(tempfile.gettempdir()))
    run_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in os.environ.get("RUN_ID", ""))[:60]
    folder = Path(tempfile.mkdtemp(prefix=f"autogolf-{run_id}-rank{rank}-"))
    (folder / "owner.pid").write_text(str(os.getpid()))
    os.environ["OUT_DIR"] = str(folder)
    sys.stdout.flush()
    out = os.open(folder / "stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.close(out)
    atexit.register(_clean_up, folder, rank)


def _sweep_dead_ranks(tmp: Path) -> None:
    """Remove the folders of ranks that died without their exit clean-up (killed: a hard
    timeout, a failed peer): one may hold a copy of the weights. A folder whose owner.pid
    names a live process, or that has none yet (being made), stays."""
    for folder in tmp.glob("autogolf-*-rank*-*"):
        try:
            pid = int((folder / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # alive, another user's


def _clean_up(folder: Path, rank: int) -> None:
    for weights in (*folder.glob("*.npz"), *folder.glob("*.ptz")):
        weights.unlink(missing_ok=True)  # rank 0's artifact is the run's; these are copies
    if getattr(sys, "last_value", None) is None:  # set by an uncaught exception before atexit
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"data_parallel: rank {rank}'s log and stdout are kept in {folder}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- one clock

def _wall_clock_capped() -> bool:
    """True unless MAX_WALLCLOCK_SECONDS is set to 0 or less. Unset means the trainer's own
    default (upstream's is 600 s), so the ranks share a clock then too."""
    raw = os.environ.get("MAX_WALLCLOCK_SECONDS", "").strip()
    try:
        return not raw or float(raw) > 0
    except ValueError:
        return True  # the trainer refuses it itself


def _share_clock(world, module_name: str) -> bool:
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "time", None) is not time:
        return False  # no `import time` in the trainer: nothing of it to replace
    module.time = RankZeroClock(world)
    return True


class RankZeroClock:
    """The `time` module, except that perf_counter() returns rank 0's clock on every rank: its
    seconds since this object was made, sent over the group (one tiny all_sum per call; every
    rank makes the same calls, as the trainer's control flow is the same on all). The seconds
    travel as whole + fraction in two float32s (exact to 1e-7 s for 194 days), as float64 is
    not summed by every backend."""

    def __init__(self, world):
        import mlx.core as mx

        self._world, self._base = world, time.perf_counter()
        self._mine = mx.array(1.0 if world.rank() == 0 else 0.0, dtype=mx.float32)

    def perf_counter(self) -> float:
        import mlx.core as mx

        s = time.perf_counter() - self._base
        whole = math.floor(s)
        sent = mx.array([whole, s - whole], dtype=mx.float32) * self._mine
        got = mx.distributed.all_sum(sent, group=self._world).tolist()
        return float(got[0]) + float(got[1])

    def __getattr__(self, name):
        return getattr(time, name)


# --------------------------------------------------------------------------- the batch

def patch_compile(world) -> None:
    """mx.compile, but a model-bound function runs on this rank's rows (RankSplit), around
    whatever mx.compile is now (the CPU stream split, or MLX's own). Nothing for None."""
    import mlx.core as mx

    if world is None or "compile" in _STATE:
        return
    inner = _STATE["compile"] = mx.compile

    def compile(fun, inputs=None, outputs=None, shapeless=False):
        compiled = inner(fun, inputs=inputs, outputs=outputs, shapeless=shapeless)
        return compiled if inputs is None else RankSplit(compiled, world)

    mx.compile = compile


def token_batch(args, kwargs) -> bool:
    """A call f(x, y) on two integer arrays with the same number of rows (a batch of token ids)."""
    import mlx.core as mx

    return (not kwargs and len(args) == 2
            and all(isinstance(a, mx.array) and a.ndim >= 1 and mx.issubdtype(a.dtype, mx.integer) for a in args)
            and args[0].shape[0] == args[1].shape[0])


def is_row_mean(fn, x, y) -> bool:
    """f on two rows against the mean of f on each row alone: whether f (every output, arrays
    only) is a mean over the batch's rows, which splitting the rows needs."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map

    halves = [fn(x[i:i + 1], y[i:i + 1]) for i in (0, 1)]
    whole = fn(x[:2], y[:2])
    if not all(isinstance(v, mx.array) for _, v in tree_flatten(whole)):
        return False
    split = tree_map(lambda a, b: (a + b) * 0.5, *halves)
    mx.eval(split, whole)
    return all(float(mx.max(mx.abs(a - b))) <= ROW_MEAN_RTOL * float(mx.max(mx.abs(b))) + 1e-6
               for (_, a), (_, b) in zip(tree_flatten(split), tree_flatten(whole)))


def all_sum_tree(tree, world):
    """Every array of a tree summed over the group, in one all_sum per dtype (the leaves
    flattened into one buffer: a gradient tree has dozens of them)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map

    leaves = [v for _, v in tree_flatten(tree)]
    summed: list = [None] * len(leaves)
    for dtype in {a.dtype for a in leaves}:
        idx = [i for i, a in enumerate(leaves) if a.dtype == dtype]
        flat = mx.concatenate([leaves[i].reshape(-1) for i in idx])
        flat = mx.distributed.all_sum(flat, group=world)
        offsets = [0]
        for i in idx:
            offsets.append(offsets[-1] + leaves[i].size)
        for j, i in enumerate(idx):
            summed[i] = flat[offsets[j]:offsets[j + 1]].reshape(leaves[i].shape)
    it = iter(summed)
    return tree_map(lambda _: next(it), tree)


class RankSplit:
    """A compiled function of a token batch (x, y) run on this rank's rows, its outputs summed
    over the group (module docstring). Other calls, batches with fewer rows than ranks, and a
    function that is not a mean over rows run on the whole batch on every rank: the same
    result, computed N times. The first-call check is agreed over the group (every rank must
    decide the same, or the collectives would not pair up)."""

    def __init__(self, fn, world):
        self.fn, self.world = fn, world
        self.checked = None  # None: not yet decided; then True (split) or False (whole batches)

    def __call__(self, *args, **kwargs):
        from mlx.utils import tree_map

        size, rank = self.world.size(), self.world.rank()
        if self.checked is False or not token_batch(args, kwargs) or args[0].shape[0] < max(size, 2):
            return self.fn(*args, **kwargs)
        x, y = args
        if self.checked is None and not self._agree(is_row_mean(self.fn, x, y)):
            return self.fn(x, y)
        n = x.shape[0]
        a, b = n * rank // size, n * (rank + 1) // size
        share = (b - a) / n
        return all_sum_tree(tree_map(lambda t: t * share, self.fn(x[a:b], y[a:b])), self.world)

    def _agree(self, mine: bool) -> bool:
        import mlx.core as mx

        votes = mx.distributed.all_sum(mx.array([1.0 if mine else 0.0]), group=self.world)
        self.checked = int(votes.item()) == self.world.size()
        if not self.checked:
            print("WARNING: data_parallel: this compiled function is not a mean over the batch's rows, so "
                  "every rank runs it on whole batches; same result, no speed-up", flush=True)
        return self.checked

"""The guard's rule for pi's `bash` tool: read anything, write none of the harness's things.

THIS IS A PATTERN CHECK, NOT A SANDBOX. It reads the command the way a careful reviewer
would -- segments split at `;`, `&&`, `||`, `|`, `&` and newlines, quotes honoured (shlex),
`cd` followed -- and refuses a segment that visibly writes a protected place:
  - a redirection (`>`, `>>`, `&>`, `>|`) or `tee` into one;
  - a command that writes its arguments (rm, mv, cp/ln/install/rsync destinations, touch,
    chmod, truncate, dd of=, sed -i, find -delete / -exec of a writer, tar, ...);
  - an inline or here-document script (python, perl, node, ruby, awk, sh -c) that names a
    protected place and contains a write primitive (bash -c / sh -c / eval are checked as
    commands in their own right);
  - git commands that change the repository (commit, checkout, reset, clean, restore, stash,
    ...): pi-autoresearch alone commits and reverts, on the harness's word;
  - the harness itself run by hand (autoresearch.sh, `python -m autogolf....`, `just` recipes
    that write, scripts/*.sh, pip/uv installs into .venv).
A determined program gets past a pattern check (a compiled binary, a path built at run
time, a script file written first and run later), so a command it allows runs in a jail
where this machine has a sandbox mechanism (bwrap, Landlock, Seatbelt: `confined` below,
autogolf/agent/shell_jail.py): everything readable, only the files in scope and a private
tmp writable. Where none exists the pattern check is all there is, and the decision says
"unconfined: pattern check only". The checks (autoresearch.checks.sh) remain the backstop.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from autogolf import sandbox
from autogolf.agent.gate_paths import IN_SCOPE

# Protected places, relative to the project root ("x/" = the folder and all below it).
PROTECTED = ("autogolf/", "scripts/", "data/", "logs/", ".venv/", ".git/", ".auto/", "agent/",
             ".tools/", ".upstream/", "autoresearch.sh", "autoresearch.checks.sh", "Justfile",
             "README.md", "pyproject.toml", "uv.lock", ".gitignore", "benchmark/UPSTREAM_COMMIT.txt")
SEPARATORS = {";", "&&", "||", "|", "&", "|&", "(", ")", ";;", "{", "}", "!"}
WRAPPERS = {"sudo", "env", "command", "exec", "nohup", "time", "nice", "ionice", "stdbuf", "timeout",
            "xargs", "builtin"}
GIT_WRITES = {"commit", "checkout", "reset", "clean", "restore", "switch", "stash", "rebase", "merge",
              "cherry-pick", "revert", "am", "apply", "rm", "mv", "add", "push", "pull", "fetch", "tag",
              "branch", "update-ref", "update-index", "symbolic-ref", "config", "gc", "prune", "replace",
              "notes", "worktree", "init", "filter-branch", "filter-repo", "reflog", "checkout-index",
              "read-tree", "write-tree", "commit-tree", "hash-object", "fast-import", "bisect"}
# Commands that write (some of) their file arguments: name -> which arguments.
WRITE_ALL = {"rm", "rmdir", "touch", "truncate", "chmod", "chown", "chgrp", "shred", "unlink", "mkdir",
             "mv", "tee", "tar", "unzip", "patch", "setfacl", "chattr", "mkfifo", "mknod"}
WRITE_LAST = {"cp", "ln", "install", "rsync", "scp"}
INTERPRETERS = re.compile(r"^(python[0-9.]*|pypy[0-9.]*|perl|ruby|node|nodejs|deno|bun|php|awk|gawk|mawk|"
                          r"lua|Rscript|tclsh|osascript)$")
SHELLS = {"bash", "sh", "zsh", "dash", "ksh", "fish"}
WRITE_PRIMITIVE = re.compile(
    r"""open\s*\([^)]*,\s*(?:mode\s*=\s*)?['"][^'"]*[wax+]|\.write|write_text|write_bytes|writeFile|appendFile|unlink|remove|"""
    r"""rmtree|rename|replace\s*\(|truncate|chmod|chown|symlink|shutil|os\.system|subprocess|popen|"""
    r"""mkdir|makedirs|touch|rmSync|fs\.|system\s*\(|>""", re.I)
MENTION = re.compile(
    r"""(?:^|[\s'"=(,:;/])(?:autogolf|scripts|data|logs|\.venv|\.git|\.auto|agent|\.tools|\.upstream)(?:/|[\s'"),;]|$)|"""
    r"""autoresearch\.sh|autoresearch\.checks\.sh|Justfile|README\.md|pyproject\.toml|uv\.lock|"""
    r"""\.gitignore|runs\.jsonl|UPSTREAM_COMMIT""")
# `just` recipes that only read; every other recipe runs the harness or writes logs/.
JUST_READ_ONLY = {"status", "ledger", "settings", "default", "--list", "-l"}
# harness modules that only read
MODULE_READ_ONLY = {"autogolf.agent.status", "autogolf.settings"}


HEREDOC = re.compile(r"""<<(-?)\s*(['"]?)([A-Za-z_][A-Za-z0-9_]*)\2""")


def strip_heredocs(command: str) -> str:
    """The command without its here-document bodies: they are data (or a script, which the
    interpreter rule reads in the raw text), never commands of this shell. Without this an
    apostrophe in a file written by `cat > f <<'EOF'` would unbalance the quoting."""
    lines, out, pending = command.split("\n"), [], []
    for line in lines:
        if pending:
            dash, delimiter = pending[0]
            if (line.lstrip("\t") if dash else line) == delimiter:
                pending.pop(0)
            continue
        out.append(line)
        pending = [(m[1] == "-", m[3]) for m in HEREDOC.finditer(line)]
    return "\n".join(out)


def _tokens(command: str) -> list[str] | None:
    """Shell words and operators, quotes honoured; newlines end a command. None when the
    quoting does not parse (then the raw-text rule alone decides)."""
    # a backtick substitution is a command of its own: cut there, as at `$(`
    lexer = shlex.shlex(command.replace("\n", " ; ").replace("`", " ; "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError:
        return None


def _segments(tokens: list[str]) -> list[list[str]]:
    out, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            if current:
                out.append(current)
            current = []
        else:
            current.append(token)
    if current:
        out.append(current)
    return out


class Places:
    """Where a word points, relative to the project root, with the `cd`s seen so far."""

    def __init__(self, root: Path):
        self.root = Path(os.path.realpath(root))
        self.cwd = self.root

    def cd(self, target: str | None) -> None:
        if not target or target in ("~", "-"):
            self.cwd = Path(os.path.expanduser("~"))
            return
        self.cwd = Path(os.path.normpath(self.cwd / os.path.expanduser(target)))

    def protected(self, word: str, whole_tree: bool = False) -> str | None:
        """The protected place `word` names (or the root, with whole_tree: `rm -rf .`), else None."""
        if not word or word.startswith("-") and "=" not in word:
            return None
        word = word.split("=", 1)[1] if word.startswith("-") else word
        if "$" in word or "`" in word:
            return f"{word} (an expansion the guard cannot resolve)" if MENTION.search(word) else None
        for path in self._candidates(word):
            try:
                rel = path.relative_to(self.root).as_posix()
            except ValueError:
                if whole_tree and self.root.is_relative_to(path):
                    return str(path)
                continue
            if rel == "." and whole_tree:
                return "the whole project"
            for entry in PROTECTED:
                if rel == entry.rstrip("/") or (entry.endswith("/") and rel.startswith(entry)):
                    return rel
            if "*" in rel or "?" in rel or "[" in rel:  # a glob: protected when it could match one
                prefix = re.split(r"[*?\[]", rel)[0]
                if any(entry.startswith(prefix) for entry in PROTECTED):
                    return rel
        return None

    def _candidates(self, word: str) -> list[Path]:
        lexical = Path(os.path.normpath(self.cwd / os.path.expanduser(word)))
        found = [lexical]
        try:
            real = Path(os.path.realpath(lexical))
            if real != lexical:
                found.append(real)  # a link that leads into a protected place
        except OSError:
            pass
        return found


def _command_word(words: list[str]) -> tuple[str, list[str]]:
    """The command a segment runs and its arguments, past assignments and wrappers."""
    i = 0
    while i < len(words):
        word = words[i]
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word):
            i += 1
        elif os.path.basename(word) in WRAPPERS:
            i += 1
            while i < len(words) and (words[i].startswith("-") or re.fullmatch(r"[0-9.]+[smhd]?", words[i])):
                i += 1
        else:
            return os.path.basename(word), words[i + 1:]
    return "", []



def _redirections(words: list[str]) -> tuple[list[str], list[str]]:
    """(the words without redirections, the files written by redirection)."""
    plain, targets, i = [], [], 0
    while i < len(words):
        word = words[i]
        if re.fullmatch(r"\d*(>>?|>\||&>>?|>&|<>)", word):
            target = words[i + 1] if i + 1 < len(words) else ""
            if not (word.endswith(">&") and re.fullmatch(r"\d+|-", target)):
                targets.append(target)
            i += 2
            continue
        if re.fullmatch(r"\d*(<<<?|<&?|<<-)", word):
            i += 2  # input: a read (a here-document's body follows as its own segments)
            continue
        if re.fullmatch(r"\d+", word) and i + 1 < len(words) and words[i + 1].startswith((">", "<", "&>")):
            i += 1  # the fd number in front of a redirection
            continue
        plain.append(word)
        i += 1
    return plain, targets


def _args(args: list[str]) -> list[str]:
    return [a for a in args if not a.startswith("-") or a.startswith("--") and "=" in a]


def _segment_problem(words: list[str], places: Places, whole: str, depth: int) -> str | None:
    words, targets = _redirections(words)
    for target in targets:
        hit = places.protected(target)
        if hit or "$" in target:
            return f"a redirection into {hit or target}"
    name, args = _command_word(words)
    if not name:
        return None
    if name in ("cd", "pushd"):
        places.cd(args[0] if args else None)
        return None
    if name == "git":
        rest = list(args)
        while rest and rest[0].startswith("-"):
            option = rest.pop(0)
            if option in ("-C", "-c", "--git-dir", "--work-tree", "--namespace") and rest:
                rest.pop(0)
        if rest and rest[0] in GIT_WRITES:
            return (f"`git {rest[0]}` changes the repository: pi-autoresearch's log_experiment commits "
                    f"(keep) and reverts (discard), on the harness's VERDICT")
        return None
    if any(w.endswith("autoresearch.sh") for w in [name] + args) or \
            ("-m" in args and any(a.startswith("autogolf.") and a not in MODULE_READ_ONLY for a in args)):
        return "the harness run by hand: run the benchmark with run_experiment (the harness writes its own logs)"
    if name == "just":
        recipe = next((a for a in args if not a.startswith("-") or a in ("--list", "-l")), "default")
        return None if recipe in JUST_READ_ONLY else f"`just {recipe}` runs the harness or writes its logs"
    if name in ("pip", "pip3", "uv", "poetry", "conda") or (name.startswith("python") and args[:2] == ["-m", "pip"]):
        if any(a in ("install", "uninstall", "sync", "add", "remove", "pip") for a in args):
            return f"`{name} ...` changes the Python environment (.venv)"
    if name in SHELLS or name == "eval" or name == "source" or name == ".":
        inline = args[args.index("-c") + 1] if "-c" in args and args.index("-c") + 1 < len(args) else None
        if name == "eval":
            inline = " ".join(args)
        if inline is not None and depth < 3:
            return shell_problem(inline, places, depth + 1)
        script = next((a for a in args if not a.startswith("-")), None)
        hit = places.protected(script) if script else None
        if hit:
            return f"runs the harness script {hit}"
        if script is None and MENTION.search(whole) and WRITE_PRIMITIVE.search(whole):
            return "a shell script on stdin that names a protected place and writes"
        return None
    if INTERPRETERS.match(name):
        in_place = name in ("perl", "ruby") and any(re.fullmatch(r"-[a-zA-Z]*i\S*", a) for a in args)
        hit = next((h for h in (places.protected(a) for a in _args(args)) if h), None) if in_place else None
        if hit:  # perl -pi -e '...' FILE edits FILE in place
            return f"`{name} -i` writes {hit}"
        script = next((a for a in args if not a.startswith("-")), None)
        flag = next((i for i, a in enumerate(args) if a in ("-c", "-e", "-E", "--eval", "-p")), None)
        if flag is not None and flag + 1 < len(args):
            code = args[flag + 1]  # python -c, perl -e, node -e: the program is this word
        elif name.endswith("awk"):
            code, script = script or "", None  # awk's first word is its program
        else:
            code = whole if script in (None, "-") else ""  # a script on stdin: a here-document
        if MENTION.search(code) and WRITE_PRIMITIVE.search(code):
            return f"an inline {name} script that names a protected place and writes"
        hit = places.protected(script) if script and script != "-" else None
        if hit and hit.startswith(("autogolf/", "scripts/")):
            return f"runs the harness script {hit}"
        return None
    return _writer_problem(name, args, places)


def _writer_problem(name: str, args: list[str], places: Places) -> str | None:
    if name == "sed" and not any(a.startswith(("-i", "--in-place")) or re.fullmatch(r"-[a-zA-Z]*i[a-zA-Z]*", a)
                                 for a in args):
        return None
    if name == "find":
        deletes = "-delete" in args
        execs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-exec", "-execdir", "-ok", "-okdir")]
        if not deletes and not any(os.path.basename(e) in WRITE_ALL | WRITE_LAST | {"sed", "perl", "dd"}
                                   for e in execs):
            return None
        paths = [a for a in args if not a.startswith("-")][:1] or ["."]
        hit = places.protected(paths[0], whole_tree=True)
        return f"`find ... -delete/-exec` over {hit}" if hit else None
    if name == "dd":
        target = next((a[3:] for a in args if a.startswith("of=")), None)
        hit = places.protected(target) if target else None
        return f"`dd of=` into {hit}" if hit else None
    if name in WRITE_ALL or name in ("sed", "perl"):
        for arg in _args(args):
            hit = places.protected(arg, whole_tree=name in ("rm", "chmod", "chown", "mv", "shred"))
            if hit:
                return f"`{name}` writes {hit}"
        return None
    if name in WRITE_LAST:
        if "-t" in args and args.index("-t") + 1 < len(args):
            dest = args[args.index("-t") + 1]
        else:
            files = _args(args)
            dest = files[-1] if files else None
        hit = places.protected(dest, whole_tree=True) if dest else None
        return f"`{name}` writes into {hit}" if hit else None
    return None


def shell_problem(command: str, places: Places, depth: int = 0) -> str | None:
    """What this command would write that it must not, in words; None when nothing is seen."""
    tokens = _tokens(strip_heredocs(command))
    if tokens is None:  # unbalanced quotes: judge the raw text alone, conservatively
        if MENTION.search(command) and WRITE_PRIMITIVE.search(command):
            return "a command the guard cannot parse that names a protected place and writes"
        return None
    for segment in _segments(tokens):
        problem = _segment_problem(segment, places, command, depth)
        if problem:
            return problem
    return None


def confined(command: str, root: Path) -> dict:
    """The allowed command, rewritten to run in the jail (autogolf/agent/shell_jail.py) when
    this machine has a sandbox mechanism; unwrapped, and saying so, when it has none."""
    kind = sandbox.mechanism()
    if kind == "none":
        return {"allow": True, "confined": "none",
                "reason": "no write to a protected place seen; unconfined: pattern check only"}
    jailed = shlex.join([sys.executable, "-I", "-m", "autogolf.agent.shell_jail", "--root", str(root),
                         "--mechanism", kind, "--", command])
    return {"allow": True, "confined": kind, "input": {"command": jailed},
            "reason": f"no write to a protected place seen; confined ({kind}): writes only "
                      f"{', '.join(IN_SCOPE)} and a private tmp"}


def decide(tool_input: dict, root: Path) -> dict:
    command = tool_input.get("command")
    if not isinstance(command, str):
        return {"allow": False, "reason": "bash needs a command"}
    problem = shell_problem(command, Places(root))
    if problem is None:
        return confined(command, root)
    return {"allow": False, "reason": (
        f"bash refused: {problem}. You may read anything; write only benchmark/train_gpt_mlx.py, "
        f"autoresearch.md and autoresearch.ideas.md (the edit and write tools). The harness, data/, "
        f"logs/, .venv, .auto/, agent/ and git's history are the harness's (a pattern check, and "
        f"a jail where a sandbox exists: see README, 'The guard').")}

"""Reads what xtask-breakdown.sh recorded and prints where the time went, as Markdown.

    python3 breakdown.py --untraced FILE.json --wrapped LOG... --totals FILE --traces TRACE...

--untraced  hyperfine's JSON export of the plain runs (the reference total)
--wrapped   one log per run from the timing wrappers (start end program args..., one call a line)
--totals    one line per wrapped run: start and end of the whole `cargo xtask ...`
--traces    one `strace -f -ttt` log per run (execve, clone; to find every process and its
            parent, grandchildren included, which the wrappers cannot see)
"""

import argparse
import json
import re
import statistics
from collections import defaultdict

LINE = re.compile(r"^(\d+) +(\d+\.\d+) (.*)$")
EXEC_CALL = re.compile(r'^execve\("([^"]*)", \[(.*?)\](?:, 0x[0-9a-f]+)?')
CLONE_CALL = re.compile(r"^(clone3?|v?fork)\(")
RESULT = re.compile(r"\) += (-?\d+)")
EXIT = re.compile(r"^\+\+\+ (exited with \d+|killed by .*) \+\+\+$")


def label(args):
    """The command as a reader knows it: the program's name and its subcommand words."""
    prog = args[0].rsplit("/", 1)[-1]
    rest = [a for a in args[1:] if not a.startswith("-") and "{{" not in a]
    if prog in ("podman", "docker") and rest:
        n = 2 if rest[0] in ("image", "system", "container") and len(rest) > 1 else 1
        return " ".join([prog] + rest[:n])
    if prog == "go" and rest:
        n = 2 if rest[0] == "tool" and len(rest) > 1 else 1
        return " ".join([prog] + rest[:n])
    return prog


def union(intervals):
    """How long at least one of the intervals was running."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0.0)


class Trace:
    """The processes of one `strace -f` log: parent, successful execs and exit of each."""

    def __init__(self, path):
        self.tgid = {}  # thread id -> process id
        self.parent = {}  # process id -> parent process id
        self.execs = defaultdict(list)  # process id -> [(time, [path, args...])]
        self.exit = {}
        pending = {}  # thread id -> (kind, data) of a call strace split (<unfinished ...>)
        with open(path) as f:
            for raw in f:
                m = LINE.match(raw.rstrip("\n"))
                if not m:
                    continue
                tid, t, rest = int(m[1]), float(m[2]), m[3]
                pid = self.tgid.get(tid, tid)
                if rest.startswith("<... "):
                    kind, data = pending.pop(tid, (None, None))
                    self._finish(kind, data, pid, t, rest)
                elif e := EXEC_CALL.match(rest):
                    args = re.findall(r'"((?:[^"\\]|\\.)*)"', e[2])
                    data = [e[1]] + args[1:]  # the program's path, then its arguments
                    if rest.endswith("<unfinished ...>"):
                        pending[tid] = ("exec", data)
                    else:
                        self._finish("exec", data, pid, t, rest)
                elif CLONE_CALL.match(rest):
                    data = "CLONE_THREAD" in rest
                    if rest.endswith("<unfinished ...>"):
                        pending[tid] = ("clone", data)
                    else:
                        self._finish("clone", data, pid, t, rest)
                elif EXIT.match(rest) and tid == pid:
                    self.exit[pid] = t

    def _finish(self, kind, data, pid, t, rest):
        r = RESULT.search(rest)
        if kind is None or not r or int(r[1]) < 0:
            return
        if kind == "exec":
            self.execs[pid].append((t, data))
        elif int(r[1]) > 0:
            (self.tgid if data else self.parent)[int(r[1])] = pid


def median_ms(values):
    return f"{1000 * statistics.median(values):.0f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--untraced", required=True)
    ap.add_argument("--wrapped", nargs="+", required=True)
    ap.add_argument("--totals", required=True)
    ap.add_argument("--traces", nargs="+", required=True)
    opts = ap.parse_args()

    with open(opts.untraced) as f:
        untraced = json.load(f)["results"][0]["times"]

    # Wrapped runs: real durations of the xtask's direct children.
    with open(opts.totals) as f:
        totals = [tuple(map(float, line.split())) for line in f if line.strip()]
    wrapped = defaultdict(lambda: [0.0] * len(opts.wrapped))
    wrapped_calls = defaultdict(lambda: [0] * len(opts.wrapped))
    busy, rest = [], []
    for i, path in enumerate(opts.wrapped):
        intervals = []
        with open(path) as f:
            for line in f:
                fields = line.rstrip("\n").split(" ")
                start, end, args = float(fields[0]), float(fields[1]), fields[2:]
                wrapped[label(args)][i] += end - start
                wrapped_calls[label(args)][i] += 1
                intervals.append((start, end))
        busy.append(union(intervals))
        rest.append(totals[i][1] - totals[i][0] - busy[-1])

    # Traced runs: cargo's share, and the process tree below the xtask.
    cargo_share, alone = [], []
    traced = defaultdict(lambda: [0.0] * len(opts.traces))
    traced_calls = defaultdict(lambda: [0] * len(opts.traces))
    for i, path in enumerate(opts.traces):
        tr = Trace(path)
        root = min(tr.execs, key=lambda p: tr.execs[p][0][0])
        # `cargo run` execs the xtask binary in its own process on Unix.
        xtask_start = next(t for t, a in tr.execs[root] if a[0].endswith("/xtask"))
        cargo_share.append(xtask_start - tr.execs[root][0][0])
        children = []
        for p, execs in tr.execs.items():
            if p == root or p not in tr.exit:
                continue
            chain, q = [], p
            while q in tr.parent:
                q = tr.parent[q]
                chain.append(q)
            if not chain or chain[-1] != root:
                continue
            start, stop = execs[-1][0], tr.exit[p]
            if chain[0] == root:
                key = ("cargo" if start < xtask_start else None, label(execs[-1][1]))
                if start >= xtask_start:
                    children.append((start, stop))
            else:
                above = tr.execs.get(chain[0])
                key = (label(above[-1][1]) if above else "?", label(execs[-1][1]))
            traced[key][i] += stop - start
            traced_calls[key][i] += 1
        alone.append(tr.exit[root] - xtask_start - union(children))

    n = len(opts.wrapped)
    print(f"Medians: {len(untraced)} plain runs, {n} runs with timing wrappers on PATH, "
          f"{len(opts.traces)} runs under strace (strace slows every process it follows: "
          "its times only show which processes ran and their proportions).\n")
    print("| what | median | calls per run |")
    print("| --- | ---: | ---: |")
    print(f"| total, plain runs (hyperfine) | {median_ms(untraced)} | |")
    print(f"| total, runs with the wrappers | {median_ms([e - s for s, e in totals])} | |")
    print(f"| &nbsp;&nbsp;at least one child of the xtask running | {median_ms(busy)} | |")
    print(f"| &nbsp;&nbsp;no child running (cargo, the xtask itself, the wrappers' start) | {median_ms(rest)} | |")
    print(f"| cargo until it execs the xtask binary (strace) | {median_ms(cargo_share)} | |")
    print(f"| the xtask with no child running (strace) | {median_ms(alone)} | |")
    print("| **each child of the xtask (wrappers)** | | |")
    for name in sorted(wrapped, key=lambda k: -statistics.median(wrapped[k])):
        print(f"| `{name}` | {median_ms(wrapped[name])} | {statistics.median(wrapped_calls[name]):g} |")
    print("| **every process, grandchildren too (strace)** | | |")
    for key in sorted(traced, key=lambda k: (k[0] is not None, k[0] or "", -statistics.median(traced[k]))):
        parent, name = key
        shown = f"`{name}`" if parent is None else f"&nbsp;&nbsp;run by `{parent}`: `{name}`"
        print(f"| {shown} | {median_ms(traced[key])} | {statistics.median(traced_calls[key]):g} |")


if __name__ == "__main__":
    main()

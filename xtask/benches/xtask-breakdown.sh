#!/usr/bin/env bash
# Where `cargo xtask build-images --coverage` spends its time when nothing changed (both images
# cached), and how long the xtask crate takes to compile.
#
#   xtask/benches/xtask-breakdown.sh [--runs N] [--compile] [--compile-runs N]
#
# Breakdown: in a scratch copy of the repository (as build-images.sh makes it: the checkout is
# never modified, the copy's go.mod names this run so the xtask's image tags are its own), one
# untimed build fills a private GOCACHE and podman's store, then N runs under
#   strace -f --seccomp-bpf -ttt -e trace=execve,clone,clone3,fork,vfork
# (only those syscalls stop the tracee, so the overhead is small) record every process: when
# it was exec'd, when it exited, and which process started it. Printed: per command the xtask
# runs (podman info, podman image inspect, go env, go list, ...), the median duration over the
# runs and how often it ran per run; then cargo's share (from its start to the exec of the
# xtask binary), the xtask binary's lifetime, the time in which at least one child ran, and the
# xtask's own time (the rest). Grandchildren (e.g. what podman info runs) are listed indented.
# A run under strace is a little slower than without: compare shares, not absolute times,
# with build-images.sh.
#
# --compile adds the xtask crate's compile time, with hyperfine (--compile-runs, default 3):
#   - `cargo build -p xtask` after `cargo clean -p xtask` (dependencies compiled),
#   - `cargo build -p xtask` into an empty target directory (everything compiled).
# Both use a target directory private to this script; cargo's registry must hold the crates
# (it does once the xtask has been built on this machine).
#
# Leaves nothing behind: the xtask's images of this run, the scratch copy and the target
# directory are removed at exit.
set -euo pipefail

self=$(readlink -f "${BASH_SOURCE[0]}")
repo=$(cd "$(dirname "$self")/../.." && pwd)

usage() {
    cat <<EOF
Usage: xtask/benches/xtask-breakdown.sh [OPTIONS]

Where \`cargo xtask build-images --coverage\` spends its time when nothing changed (per
subprocess, from strace), and optionally the xtask crate's compile time.

Options:
  --runs N           traced runs of the nothing-changed build (default 5)
  --compile          also time \`cargo build -p xtask\`: after \`cargo clean -p xtask\`, and
                     into an empty target directory (hyperfine)
  --compile-runs N   hyperfine runs of each compile (default 3)
  --trace-dir DIR    keep the strace logs in DIR (default: removed at exit)
  -h, --help         this text
EOF
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

usage_error() {
    printf 'error: %s (see --help)\n' "$*" >&2
    exit 2
}

runs=5
compile=0
compile_runs=3
trace_dir=""
while [ $# -gt 0 ]; do
    case $1 in
    --runs)
        [ $# -ge 2 ] || usage_error "--runs needs a number"
        runs=$2
        shift 2
        ;;
    --compile)
        compile=1
        shift
        ;;
    --compile-runs)
        [ $# -ge 2 ] || usage_error "--compile-runs needs a number"
        compile_runs=$2
        shift 2
        ;;
    --trace-dir)
        [ $# -ge 2 ] || usage_error "--trace-dir needs a directory"
        trace_dir=$2
        shift 2
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) usage_error "unknown argument $1" ;;
    esac
done
for n in "$runs" "$compile_runs"; do
    case $n in
    '' | *[!0-9]* | 0) usage_error "run counts are whole numbers >= 1, not '$n'" ;;
    esac
done

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    PATH="$PATH:/usr/local/go/bin"
fi
missing=()
for tool in cargo go podman strace python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[ "$compile" = 0 ] || command -v hyperfine >/dev/null || missing+=(hyperfine)
[ ${#missing[@]} -eq 0 ] || die "not on PATH: ${missing[*]} (Debian: apt-get install -y strace hyperfine podman runc python3)"
if [ -z "${CONTAINERS_CONF:-}" ] && [ -f "$repo/.ci/containers.conf" ]; then
    export CONTAINERS_CONF="$repo/.ci/containers.conf"
fi
podman info --format '{{.Host.OCIRuntime.Name}}' >/dev/null 2>&1 ||
    die "podman does not answer (\`podman info\` fails); where podman needs runc and lower ulimits: export CONTAINERS_CONF=$repo/.ci/containers.conf"

state=$(mktemp -d "${TMPDIR:-/tmp}/xtask-breakdown.XXXXXX")
copy="$state/repo"
run_id="$(date -u +%Y%m%d%H%M%S)-$$"
podman images -a -q --no-trunc | sed 's/^sha256://' | sort -u >"$state/preexisting-ids.txt"

cleanup() {
    local status=$? ref id refs
    trap - EXIT INT TERM
    set +e
    # The xtask's images of this run (their tags are this run's own: see go.mod below).
    mapfile -t refs < <(grep -ohE '^(datastorage|gateway) +localhost/[a-z]+:e2e-[0-9a-f]{12}' \
        "$state"/*.log 2>/dev/null | awk '{print $2}' | sort -u)
    for ref in "${refs[@]}"; do
        id=$(podman image inspect --format '{{.Id}}' "$ref" 2>/dev/null) || continue
        grep -qx "${id#sha256:}" "$state/preexisting-ids.txt" || podman rmi --ignore "$ref" >/dev/null 2>&1
    done
    if [ -n "$trace_dir" ] && ls "$state"/trace-*.txt >/dev/null 2>&1; then
        mkdir -p "$trace_dir" && cp "$state"/trace-*.txt "$trace_dir/"
    fi
    rm -rf "$state"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$copy"
(
    cd "$repo"
    shopt -s nullglob
    cp -a go.mod go.sum* Cargo.toml Cargo.lock cmd internal docker xtask .cargo .ci "$copy/"
)
# Changes no binary; makes the xtask's image tags (a hash over go.mod among others) ours.
printf '\n// xtask breakdown run %s\n' "$run_id" >>"$copy/go.mod"
export XTASK_PROJECT_ROOT=$copy
export GOCACHE="$state/gocache"
# Kept between runs of this script, like build-images.sh's: compiled once, not per run.
export CARGO_TARGET_DIR="${BREAKDOWN_CARGO_TARGET_DIR:-$repo/target/xtask-bench/cargo-target}"
cd "$copy"

printf '== compiling the xtask and building the images once (untimed)\n'
cargo build --quiet --package xtask || die "cargo build --package xtask failed"
cargo xtask build-images --coverage >"$state/first.log" 2>&1 || {
    tail -n 30 "$state/first.log" >&2
    die "the first cargo xtask build-images --coverage failed"
}

printf '== %s traced runs of: cargo xtask build-images --coverage (nothing changed)\n' "$runs"
for i in $(seq "$runs"); do
    strace -f --seccomp-bpf -ttt -s 256 -e trace=execve,clone,clone3,fork,vfork -e signal=none \
        -o "$state/trace-$i.txt" cargo xtask build-images --coverage >"$state/run-$i.log" 2>&1 ||
        die "traced run $i failed: $(tail -n 5 "$state/run-$i.log")"
    grep -qE ' cached ' "$state/run-$i.log" || die "run $i built an image: nothing should have changed"
done

python3 - "$state"/trace-*.txt <<'PY'
import re, statistics, sys
from collections import defaultdict

LINE = re.compile(r"^(\d+) +(\d+\.\d+) (.*)$")
EXEC_CALL = re.compile(r'^execve\("([^"]*)", \[(.*?)\](?:, 0x[0-9a-f]+)?')
CLONE_CALL = re.compile(r"^(clone3?|v?fork)\(")
RESULT = re.compile(r"\) += (-?\d+)")
EXIT = re.compile(r"^\+\+\+ (exited with \d+|killed by .*) \+\+\+$")


def words(argv):
    return [w.encode().decode("unicode_escape") for w in re.findall(r'"((?:[^"\\]|\\.)*)"', argv)]


def label(args):
    """The command as a reader knows it: program name and its subcommand words."""
    prog = args[0].rsplit("/", 1)[-1]
    rest = [a for a in args[1:] if not a.startswith("-") and "{{" not in a]
    if prog in ("podman", "docker") and rest:
        n = 2 if rest[0] in ("image", "system", "container") and len(rest) > 1 else 1
        return " ".join([prog] + rest[:n])
    if prog == "go" and rest:
        n = 2 if rest[0] == "tool" and len(rest) > 1 else 1
        return " ".join([prog] + rest[:n])
    return prog


class Trace:
    """Processes of one strace -f log: each with its parent, its execs and its exit."""

    def __init__(self, path):
        self.tgid = {}  # thread id -> process id
        self.parent = {}  # process id -> parent process id
        self.execs = defaultdict(list)  # process id -> [(time, argv)], successful execs
        self.exit = {}
        pending = {}  # thread id -> (kind, data) of a call shown as <unfinished ...>
        for raw in open(path):
            m = LINE.match(raw.rstrip("\n"))
            if not m:
                continue
            tid, t, rest = int(m[1]), float(m[2]), m[3]
            pid = self.tgid.get(tid, tid)
            if rest.startswith("<... "):
                kind, data = pending.pop(tid, (None, None))
                self._finish(kind, data, pid, t, rest)
            elif e := EXEC_CALL.match(rest):
                data = [e[1]] + words(e[2])[1:]  # the program's path, then its arguments
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
            child = int(r[1])
            if data:
                self.tgid[child] = pid
            else:
                self.parent[child] = pid


def union(intervals):
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0.0)


rows = defaultdict(list)  # (parent label or None, label) -> per-run summed durations
calls = defaultdict(list)
totals = defaultdict(list)
for path in sys.argv[1:]:
    tr = Trace(path)
    root = min(tr.execs, key=lambda p: tr.execs[p][0][0])
    # cargo execs the xtask binary in its own process (`cargo run` on Unix).
    xtask_start = next(t for t, argv in tr.execs[root] if argv[0].endswith("/xtask"))
    begin, end = tr.execs[root][0][0], tr.exit[root]
    run, n, children = defaultdict(float), defaultdict(int), []
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
        name = label(execs[-1][1])
        if chain[0] == root:
            key = (None, name)
            if start >= xtask_start:
                children.append((start, stop))
            else:
                key = ("cargo", name)
        else:
            parent_execs = tr.execs.get(chain[0])
            key = (label(parent_execs[-1][1]) if parent_execs else "?", name)
        run[key] += stop - start
        n[key] += 1
    for key in run:
        rows[key].append(run[key])
        calls[key].append(n[key])
    busy = union(children)
    totals["total: cargo xtask build-images --coverage"].append(end - begin)
    totals["cargo (and rustup's proxy) until it execs the xtask binary"].append(xtask_start - begin)
    totals["the xtask binary, exec to exit"].append(end - xtask_start)
    totals["&nbsp;&nbsp;while at least one child process runs"].append(busy)
    totals["&nbsp;&nbsp;the xtask alone (no child running)"].append(end - xtask_start - busy)

runs = len(sys.argv) - 1
ms = lambda v: f"{1000 * statistics.median(v):.0f} ms"
print(f"\nmedians over {runs} traced runs; a command run k times in a run counts the sum of its k durations\n")
print("| what | median | calls per run |")
print("| --- | ---: | ---: |")
for name, values in totals.items():
    print(f"| {name} | {ms(values)} | |")
print("| **child processes of the xtask** | | |")
order = sorted(rows, key=lambda k: (k[0] is not None, k[0] or "", -statistics.median(rows[k])))
for key in order:
    values = rows[key] + [0.0] * (runs - len(rows[key]))
    parent, name = key
    shown = f"`{name}`" if parent is None else f"&nbsp;&nbsp;run by `{parent}`: `{name}`"
    print(f"| {shown} | {ms(values)} | {statistics.median(calls[key]):g} |")
PY

if [ "$compile" = 1 ]; then
    printf '\n== compile time of the xtask crate (%s runs each)\n' "$compile_runs"
    target="$state/cargo-target"
    CARGO_TARGET_DIR=$target cargo build --quiet --package xtask ||
        die "cargo build --package xtask failed"
    CARGO_TARGET_DIR=$target hyperfine --runs "$compile_runs" \
        --command-name "cargo build -p xtask after cargo clean -p xtask" \
        --prepare "cargo clean --quiet --package xtask" \
        --command-name "cargo build -p xtask, empty target dir" \
        --prepare "rm -rf $(printf '%q' "$target")" \
        "cargo build --quiet --package xtask" \
        "cargo build --quiet --package xtask"
fi

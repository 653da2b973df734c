#!/usr/bin/env bash
# Where `cargo xtask build-images --coverage` spends its time when nothing changed (both images
# cached), and how long the xtask crate takes to compile.
#
#   xtask/benches/xtask-breakdown.sh [--runs N] [--compile] [--compile-runs N]
#
# Breakdown: in a scratch copy of the repository (as build-images.sh makes it: the checkout is
# never modified, the copy's go.mod names this run so the xtask's image tags are its own), one
# untimed build fills a private GOCACHE and podman's store, then three sets of N runs:
#   - plain, with hyperfine: the reference total;
#   - with timing wrappers for podman, go and df first on PATH: the real duration of each
#     command the xtask runs (podman info, podman image inspect, go env, go list, df), and how
#     much of the total has no child running (cargo, the xtask itself);
#   - under strace -f (execve and clone only): every process with its parent, grandchildren
#     too (what podman info runs), and cargo's share until it execs the xtask binary. strace
#     slows each process it follows (podman's many threads most): its times show which
#     processes ran and their proportions, not real durations.
# breakdown.py prints medians as a Markdown table.
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
command it runs, from timing wrappers and strace), and optionally the xtask crate's compile
time.

Options:
  --runs N           runs of the nothing-changed build, in each of the three sets: plain,
                     with timing wrappers, under strace (default 5)
  --compile          also time \`cargo build -p xtask\`: after \`cargo clean -p xtask\`, and
                     into an empty target directory (hyperfine)
  --compile-runs N   hyperfine runs of each compile (default 3)
  --trace-dir DIR    keep the strace and wrapper logs in DIR (default: removed at exit)
  -h, --help         this text
EOF
}

# shellcheck source=xtask/benches/lib.sh
source "$(dirname "$self")/lib.sh"

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
need_count --runs "$runs"
need_count --compile-runs "$compile_runs"

need_tools "Debian: apt-get install -y strace hyperfine podman runc python3" cargo go podman strace hyperfine python3
use_repo_podman_settings

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
        mkdir -p "$trace_dir" && cp "$state"/trace-*.txt "$state"/wrapped-*.txt "$trace_dir/"
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
    cp -a go.mod go.sum* Cargo.toml Cargo.lock cmd internal docker test xtask .cargo .ci "$copy/"
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

printf '== %s plain runs of: cargo xtask build-images --coverage (nothing changed)\n' "$runs"
hyperfine --runs "$runs" --warmup 1 --export-json "$state/untraced.json" \
    "cargo xtask build-images --coverage" || die "the plain runs failed"

# Timing wrappers first on PATH: each records start, end and arguments of one call, then
# passes the exit status on. Their own start (bash, a few ms) falls outside the recorded span.
mkdir -p "$state/wrap"
for program in podman go df; do
    real=$(command -v "$program") || die "$program is not on PATH"
    cat >"$state/wrap/$program" <<WRAPPER
#!/usr/bin/env bash
start=\$EPOCHREALTIME
$(printf '%q' "$real") "\$@"
status=\$?
printf '%s %s %s\n' "\$start" "\$EPOCHREALTIME" "$program \$*" >>"\$BREAKDOWN_LOG"
exit "\$status"
WRAPPER
    chmod +x "$state/wrap/$program"
done
printf '== %s runs with timing wrappers for podman, go and df on PATH\n' "$runs"
: >"$state/wrapped-totals.txt"
for i in $(seq "$runs"); do
    started=$EPOCHREALTIME
    BREAKDOWN_LOG="$state/wrapped-$i.txt" PATH="$state/wrap:$PATH" \
        cargo xtask build-images --coverage >"$state/wrapped-run-$i.log" 2>&1 ||
        die "wrapped run $i failed: $(tail -n 5 "$state/wrapped-run-$i.log")"
    printf '%s %s\n' "$started" "$EPOCHREALTIME" >>"$state/wrapped-totals.txt"
    grep -qE ' cached ' "$state/wrapped-run-$i.log" || die "wrapped run $i built an image: nothing should have changed"
done

printf '== %s runs under strace\n' "$runs"
for i in $(seq "$runs"); do
    strace -f --seccomp-bpf -ttt -s 256 -e trace=execve,clone,clone3,fork,vfork -e signal=none \
        -o "$state/trace-$i.txt" cargo xtask build-images --coverage >"$state/run-$i.log" 2>&1 ||
        die "traced run $i failed: $(tail -n 5 "$state/run-$i.log")"
    grep -qE ' cached ' "$state/run-$i.log" || die "run $i built an image: nothing should have changed"
done

printf '\n'
python3 "$(dirname "$self")/breakdown.py" --untraced "$state/untraced.json" \
    --totals "$state/wrapped-totals.txt" --wrapped "$state"/wrapped-[0-9]*.txt \
    --traces "$state"/trace-*.txt

if [ "$compile" = 1 ]; then
    printf '\n== compile time of the xtask crate (%s runs each)\n' "$compile_runs"
    target="$state/cargo-target"
    CARGO_TARGET_DIR=$target cargo build --quiet --package xtask ||
        die "cargo build --package xtask failed"
    CARGO_TARGET_DIR=$target hyperfine --runs "$compile_runs" --export-json "$state/compile.json" \
        --command-name "cargo build -p xtask after cargo clean -p xtask" \
        --prepare "cargo clean --quiet --package xtask" \
        --command-name "cargo build -p xtask, empty target dir" \
        --prepare "rm -rf $(printf '%q' "$target")" \
        "cargo build --quiet --package xtask" \
        "cargo build --quiet --package xtask"
    python3 - "$state/compile.json" <<'PY'
import json, sys

print("\n| compile | median | runs |\n| --- | ---: | ---: |")
for r in json.load(open(sys.argv[1]))["results"]:
    print(f"| {r['command']} | {r['median']:.2f} s | {len(r['times'])} |")
PY
fi

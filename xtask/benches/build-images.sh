#!/usr/bin/env bash
# Benchmark: `cargo xtask build-images --coverage` side by side with what a user would run
# instead, in every build scenario:
#   - Makefile: xtask/benches/Makefile, one `go build` with the same coverage flags for both
#     services, then one `podman build` of docker/runtime.Dockerfile per service, every time
#     (Go's build cache and podman's layer cache apply);
#   - Makefile (docker) (when a docker daemon answers): the same Makefile with ENGINE=docker,
#     one `docker build` per service (docker's cache applies; container mode with
#     DOCKER_BUILDKIT=1, which needs a client that has BuildKit: see README, Docker);
#   - ko (when installed): `ko build --push=false --tarball ...` of both services with the
#     same flags (xtask/benches/.ko.yaml), then `podman load` of the tarball.
#
#   xtask/benches/build-images.sh [--runs N] [--cold-go-cache] [--container] [--no-ko] [--no-docker]
#   (--help lists every option)
#
# Set-up (all of it is undone at exit: images, the scratch copy, the caches in it):
#   - Everything runs in a scratch copy of the repository in a temp dir (go.mod, go.sum*,
#     cmd/, internal/, docker/, test/ (the suites name the services), xtask/, Cargo.*,
#     .cargo/, .ci/, .containerignore, .dockerignore), so the checkout is never modified. The
#     copy's go.mod gets a comment naming this run: it changes no binary, but go.mod is
#     hashed into the xtask's tags, so its images (localhost/<svc>:e2e-<hash>) are this run's
#     own and cleanup removes no image of another run. The Makefile's and ko's images carry
#     the run id in their names.
#   - xtask: `cargo xtask build-images --coverage` in the copy with XTASK_PROJECT_ROOT=<copy>
#     and CARGO_TARGET_DIR=<a directory kept between runs>, compiled before anything is timed;
#     cargo's own up-to-date check is part of the time, as it is for a user.
#   - Go: GOCACHE is private to the benchmark (in the temp dir), so `go clean -cache` of the
#     cold scenario never touches the user's cache; setup fills it once for every tool.
#   - ko offline: ko takes a base image from its cache ($KOCACHE/img, an OCI image layout)
#     without asking a registry only when the base is pinned by digest. So setup builds an
#     empty base with podman (FROM scratch, USER 65532:65532 as in runtime.Dockerfile,
#     --timestamp 0), pushes it into $KOCACHE/img with `podman push oci:...`, removes it from
#     podman's store, and pins its digest as defaultBaseImage in the copy's .ko.yaml.
#   - Every timed command writes its output to a log file (the same cost for each tool); the
#     logs name the images and intermediate images each tool made, for cleanup.
#
# Scenarios, each one hyperfine invocation with every tool in it (paired):
#   1. nothing changed (warm)                   --warmup 1
#   2. one line changed in cmd/gateway          --prepare appends a unique comment line to
#                                               cmd/gateway/main.go (of the copy), --warmup 1
#   3. images removed, Go cache warm            --prepare removes the images the tool made,
#                                               with podman's layer cache of them (docker:
#                                               `docker rmi`, which removes the untagged
#                                               parents, its cache, too), --warmup 1
#   4. images removed, Go cache empty           (--cold-go-cache) --prepare also runs
#                                               `go clean -cache` on the private GOCACHE
#   5. container mode, one line changed         (--container) xtask --build-mode container vs
#                                               `make images-container` (both UBI9
#                                               Dockerfiles); no registry here, so all get
#                                               BUILDER_IMAGE=<a stand-in built from the
#                                               host's Go, xtask/tests/standin/> and
#                                               BASE_IMAGE=scratch. ko has no such mode.
# Prints a Markdown table of hyperfine's medians with ratios, and each hyperfine command line.
# Timings on a shared 2-core machine are noisy: compare medians, rerun when in doubt.
#
# Needs: cargo, go, podman, make, hyperfine, python3; busybox (/bin/busybox) for --container;
# for the docker column a daemon answering (DOCKER_HOST as .ci/run exports it).
# Where podman needs runc and lower ulimits, CONTAINERS_CONF=<repo>/.ci/containers.conf (set
# here when unset).
set -euo pipefail

self=$(readlink -f "${BASH_SOURCE[0]}")
repo=$(cd "$(dirname "$self")/../.." && pwd)

usage() {
    cat <<EOF
Usage: xtask/benches/build-images.sh [OPTIONS]

Times \`cargo xtask build-images --coverage\` against a plain Makefile (with podman, and with
docker when a daemon answers) and ko (when installed)
in each build scenario, with hyperfine, and prints a Markdown table of medians and ratios.
Works on a scratch copy of the repository; removes every image it made when it exits.

Options:
  --runs N              timed runs per tool and scenario (default 5)
  --cold-go-cache       add scenario 4: images removed, Go cache empty (slow: the whole
                        standard library is compiled with coverage on every run)
  --container           add scenario 5: container mode, one line changed (slow: builds a
                        stand-in builder image, then compiles in containers without a Go cache)
  --no-ko               leave out the ko column even when ko is installed
  --no-docker           leave out the Makefile (docker) column even when a docker daemon
                        answers
  --ko PATH             the ko binary (default: ko on PATH, else \$(go env GOPATH)/bin/ko)
  --results DIR         where the JSON exports, the tools' logs and the table go
                        (default: <repo>/target/xtask-bench/results-<UTC time>)
  --cargo-target-dir DIR
                        CARGO_TARGET_DIR for the xtask, kept between benchmark runs
                        (default: <repo>/target/xtask-bench/cargo-target)
  -h, --help            this text

Exit status: 0 when every scenario ran, 1 on a setup error or a failed build, 2 on a bad
command line.
EOF
}

# shellcheck source=xtask/benches/lib.sh
source "$(dirname "$self")/lib.sh"

say() {
    printf '\n== %s\n' "$*"
}

# ---------------------------------------------------------------------------------------------
# State shared with the --prepare steps (hyperfine runs them as separate processes, so it lives
# in exported variables and files under $BENCH_STATE).

# Every image or image ID the benchmark made, one per line, appended as they become known.
made_file() { printf '%s/made-images.txt' "$BENCH_STATE"; }

podman_quiet() {
    podman "$@" >>"$BENCH_STATE/podman-cleanup.log" 2>&1
}

# Whether an image ID (full, with or without sha256:) existed before the benchmark started.
preexisting() {
    local id=${1#sha256:}
    grep -qx "$id" "$BENCH_STATE/preexisting-ids.txt"
}

# Every image name this benchmark gave (or its tools gave) an image, one per line.
my_tags() {
    xtask_refs
    make_tags
    printf '%s/datastorage:latest\n%s/gateway:latest\n' "$KO_DOCKER_REPO" "$KO_DOCKER_REPO"
    printf 'localhost/bench-ko-base:%s\n%s\n' "$BENCH_RUN_ID" "$BENCH_STANDIN"
}

# Removes images by name or ID, without --force (an image that another image or a container
# still needs stays), and never
#   - an image that existed before the benchmark started;
#   - by ID, an image that also carries a name that is not ours: podman's layer cache can give
#     another run's build our image (container mode: the binary is the same in every checkout),
#     and that run named it. By name, podman then only removes our name.
remove_images() {
    local ref id tags tag
    my_tags | sort -u >"$BENCH_STATE/my-tags.txt"
    for ref in "$@"; do
        id=$(podman image inspect --format '{{.Id}}' "$ref" 2>/dev/null) || continue
        if preexisting "$id"; then
            printf 'keeping %s (%s): it existed before the benchmark\n' "$ref" "$id" \
                >>"$BENCH_STATE/podman-cleanup.log"
            continue
        fi
        if [[ $ref =~ ^(sha256:)?[0-9a-f]{11,64}$ ]]; then
            tags=$(podman image inspect --format '{{range .RepoTags}}{{println .}}{{end}}' "$ref" 2>/dev/null || true)
            tag=$(printf '%s\n' "$tags" | grep -vxFf "$BENCH_STATE/my-tags.txt" | grep -m1 . || true)
            if [ -n "$tag" ]; then
                printf 'keeping %s: it is also %s, a name that is not ours\n' "$ref" "$tag" \
                    >>"$BENCH_STATE/podman-cleanup.log"
                continue
            fi
        fi
        podman_quiet rmi --ignore "$ref" || true
    done
}

# The xtask's image references in its logs, oldest first (the last line of a service is the
# image it made last).
xtask_refs() {
    cat "$BENCH_STATE"/xtask*.log 2>/dev/null |
        grep -oE '^(datastorage|gateway) +localhost/[a-z]+:e2e-[0-9a-f]{12}' |
        awk '{print $2}' || true
}

# The images podman build made for the Makefile, from its logs: every step's image ("--> <id>":
# the intermediate images, which are podman's layer cache) and the final image (a bare full ID).
# An ID whose first mention is "--> Using cache <id>" was made by someone else: not ours.
make_ids() {
    cat "$BENCH_STATE"/make*.log 2>/dev/null |
        sed -nE 's/^--> Using cache ([0-9a-f]{64})$/reused \1/p; s/^--> ([0-9a-f]{11,64})$/made \1/p; s/^([0-9a-f]{64})$/made \1/p' |
        awk '{ id = substr($2, 1, 11); if (!(id in seen)) { seen[id] = $1; order[++n] = id } }
            END { for (i = n; i >= 1; i--) if (seen[order[i]] == "made") print order[i] }' || true
}

make_tags() {
    local svc
    for svc in datastorage gateway; do
        printf '%s-%s:%s\n' "$BENCH_MAKE_REPO" "$svc" "$BENCH_RUN_ID"
        printf '%s-%s-ubi9:%s\n' "$BENCH_MAKE_REPO" "$svc" "$BENCH_RUN_ID"
    done
}

# ko's tarball is rewritten by every run: its image IDs (config digests, which podman load
# keeps as the image ID) and tags are appended to the made list before each run and at the end.
record_ko() {
    [ -f "$BENCH_STATE/ko.tar" ] || return 0
    tar -xOf "$BENCH_STATE/ko.tar" manifest.json 2>/dev/null |
        python3 -c '
import json, sys
for image in json.load(sys.stdin):
    print(image["Config"])
    for tag in image.get("RepoTags") or []:
        print(tag)
' >>"$(made_file)" || true
}

# The images a tool made that still hold its latest build, for "images removed" scenarios.
# Removing the Makefile's tags alone would leave podman's layer cache (the intermediate
# images), and its next build would only re-tag: so its intermediate images go as well.
remove_tool_images() {
    local tool=$1 svc last tags ids
    case $tool in
    xtask)
        for svc in datastorage gateway; do
            last=$(xtask_refs | grep "/$svc:" | tail -n 1 || true)
            [ -z "$last" ] || remove_images "$last"
        done
        ;;
    make)
        mapfile -t tags < <(make_tags)
        remove_images "${tags[@]}"
        mapfile -t ids < <(make_ids)
        [ ${#ids[@]} -eq 0 ] || remove_images "${ids[@]}"
        ;;
    make-docker)
        # Ours by name (the run id); without --force, nothing another image or container uses.
        mapfile -t tags < <(make_tags)
        docker rmi "${tags[@]}" >>"$BENCH_STATE/docker-cleanup.log" 2>&1 || true
        ;;
    ko)
        [ -f "$BENCH_STATE/ko.tar" ] || return 0
        mapfile -t tags < <(tar -xOf "$BENCH_STATE/ko.tar" manifest.json |
            python3 -c 'import json,sys; [print(t) for i in json.load(sys.stdin) for t in i.get("RepoTags") or []]')
        remove_images "${tags[@]}"
        ;;
    esac
}

# hyperfine's --prepare: `build-images.sh --prepare-step TOOL ACTION`, run before each run.
prepare_step() {
    local tool=$1 action=$2
    [ -n "${BENCH_STATE:-}" ] || die "--prepare-step is for the benchmark's own use"
    cd "$XTASK_PROJECT_ROOT"
    record_ko
    case $action in
    none) ;;
    change)
        # A unique line: every run changes cmd/gateway anew, whichever tool ran before.
        printf '// bench %s %s\n' "$tool" "$(date +%s%N)" >>cmd/gateway/main.go
        ;;
    remove)
        remove_tool_images "$tool"
        ;;
    remove-cold)
        remove_tool_images "$tool"
        go clean -cache
        ;;
    *) die "unknown prepare action $action" ;;
    esac
}

if [ "${1:-}" = "--prepare-step" ]; then
    [ $# -eq 3 ] || usage_error "--prepare-step TOOL ACTION"
    prepare_step "$2" "$3"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# Command line

runs=5
cold=0
container=0
want_ko=1
want_docker=1
ko_bin=""
results=""
cargo_target=""
while [ $# -gt 0 ]; do
    case $1 in
    --runs)
        [ $# -ge 2 ] || usage_error "--runs needs a number"
        runs=$2
        shift 2
        ;;
    --runs=*)
        runs=${1#*=}
        shift
        ;;
    --cold-go-cache)
        cold=1
        shift
        ;;
    --container)
        container=1
        shift
        ;;
    --no-ko)
        want_ko=0
        shift
        ;;
    --ko)
        [ $# -ge 2 ] || usage_error "--ko needs a path"
        ko_bin=$2
        shift 2
        ;;
    --results)
        [ $# -ge 2 ] || usage_error "--results needs a directory"
        results=$2
        shift 2
        ;;
    --cargo-target-dir)
        [ $# -ge 2 ] || usage_error "--cargo-target-dir needs a directory"
        cargo_target=$2
        shift 2
        ;;
    --no-docker)
        want_docker=0
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) usage_error "unknown argument $1" ;;
    esac
done
need_count --runs "$runs"

# ---------------------------------------------------------------------------------------------
# Tools

need_tools "Debian: apt-get install -y podman runc make hyperfine python3; Go from https://go.dev/dl/, Rust from https://rustup.rs" cargo go podman make hyperfine python3
if [ "$container" = 1 ] && [ ! -x /bin/busybox ]; then
    die "--container needs a static busybox at /bin/busybox for the stand-in builder image (Debian: apt-get install -y busybox-static)"
fi

use_repo_podman_settings

ko_reason=""
if [ "$want_ko" = 1 ]; then
    if [ -z "$ko_bin" ]; then
        ko_bin=$(command -v ko || true)
        if [ -z "$ko_bin" ] && [ -x "$(go env GOPATH)/bin/ko" ]; then
            ko_bin="$(go env GOPATH)/bin/ko"
        fi
    fi
    if [ -z "$ko_bin" ]; then
        ko_reason="ko is not installed (install: go install github.com/google/ko@latest)"
    elif [ ! -x "$ko_bin" ]; then
        die "--ko $ko_bin is not an executable"
    fi
else
    ko_reason="--no-ko"
fi
[ -z "$ko_reason" ] || printf 'skipping the ko column: %s\n' "$ko_reason"

docker_reason=""
if [ "$want_docker" = 0 ]; then
    docker_reason="--no-docker"
elif ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    docker_reason="no docker daemon answers (\`docker version\`; .ci/run's way to start one is in the README's Tests)"
fi
[ -z "$docker_reason" ] || printf 'skipping the Makefile (docker) column: %s\n' "$docker_reason"

# ---------------------------------------------------------------------------------------------
# Scratch state, removed at exit

run_id="$(date -u +%Y%m%d%H%M%S)-$$"
export BENCH_RUN_ID=$run_id
export BENCH_STATE
BENCH_STATE=$(mktemp -d "${TMPDIR:-/tmp}/xtask-bench.XXXXXX")
export BENCH_MAKE_REPO=localhost/bench-make
export KO_DOCKER_REPO="localhost/bench-ko-$run_id"
export BENCH_STANDIN="localhost/bench-standin-go-builder:$run_id"
standin=$BENCH_STANDIN
copy="$BENCH_STATE/repo"
results=${results:-$repo/target/xtask-bench/results-$(date -u +%Y%m%dT%H%M%SZ)}
cargo_target=${cargo_target:-$repo/target/xtask-bench/cargo-target}
mkdir -p "$results" "$cargo_target"
results=$(cd "$results" && pwd)
cargo_target=$(cd "$cargo_target" && pwd)

# What existed before: never removed, whatever a log says.
podman images -a -q --no-trunc | sed 's/^sha256://' | sort -u >"$BENCH_STATE/preexisting-ids.txt"
: >"$(made_file)"

# Images built FROM our stand-in builder, itself included: the container builds' intermediate
# images, which no log names (the xtask does not print podman's output) and which podman's
# parent links do not all reach. The stand-in carries a label naming this run, and every
# image built FROM it inherits that label.
standin_family() {
    podman images -a -q --no-trunc --filter "label=xtask-bench.run=$BENCH_RUN_ID" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    printf '\n== cleanup: removing the images this benchmark made\n'
    record_ko
    {
        xtask_refs
        make_tags
        printf '%s/datastorage:latest\n%s/gateway:latest\n' "$KO_DOCKER_REPO" "$KO_DOCKER_REPO"
        cat "$(made_file)"
        make_ids
    } | awk 'NF && !seen[$0]++' >"$BENCH_STATE/to-remove.txt"
    mapfile -t doomed <"$BENCH_STATE/to-remove.txt"
    # Twice: a parent goes once its children have.
    for _ in 1 2; do
        [ ${#doomed[@]} -eq 0 ] || remove_images "${doomed[@]}"
    done
    if [ -z "$docker_reason" ]; then
        mapfile -t tags < <(make_tags)
        docker rmi "${tags[@]}" "$standin" >>"$BENCH_STATE/docker-cleanup.log" 2>&1
    fi
    # Three passes: a parent goes once its children have.
    mapfile -t family < <(standin_family)
    for _ in 1 2 3; do
        [ ${#family[@]} -eq 0 ] || remove_images "${family[@]}"
    done
    local left=()
    mapfile -t family < <(standin_family)
    for ref in "${doomed[@]}" "${family[@]}"; do
        if podman image exists "$ref" 2>/dev/null &&
            ! preexisting "$(podman image inspect --format '{{.Id}}' "$ref")"; then
            left+=("$ref")
        fi
    done
    if [ ${#left[@]} -gt 0 ]; then
        printf 'warning: left in podman'"'"'s store (in use, or also named by another run): %s\n' "${left[*]}" >&2
        cp "$BENCH_STATE/podman-cleanup.log" "$results/" 2>/dev/null
    fi
    # The tools' output, to check what each run did (cached, built, "Using cache").
    mkdir -p "$results/logs" && cp "$BENCH_STATE"/*.log "$results/logs/" 2>/dev/null
    rm -rf "$BENCH_STATE"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# The scratch copy

say "scratch copy of $repo in $copy"
mkdir -p "$copy"
(
    cd "$repo"
    shopt -s nullglob
    cp -a go.mod go.sum* Cargo.toml Cargo.lock cmd internal docker test xtask .cargo .ci "$copy/"
    for f in .containerignore .dockerignore; do
        [ ! -e "$f" ] || cp -a "$f" "$copy/"
    done
)
printf '\n// xtask benchmark run %s\n' "$run_id" >>"$copy/go.mod"
cp "$repo/xtask/benches/Makefile" "$copy/Makefile"
cp "$copy/cmd/gateway/main.go" "$BENCH_STATE/gateway-main.go.orig"

export XTASK_PROJECT_ROOT=$copy
export CARGO_TARGET_DIR=$cargo_target
export GOCACHE="$BENCH_STATE/gocache"
export KOCACHE="$BENCH_STATE/kocache"
cd "$copy"

say "compiling the xtask (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --quiet --package xtask || die "cargo build --package xtask failed in the scratch copy"

# ---------------------------------------------------------------------------------------------
# ko's base image, offline

if [ -z "$ko_reason" ]; then
    say "ko: an empty base image in ko's cache ($KOCACHE/img), pinned by digest in .ko.yaml"
    base="localhost/bench-ko-base:$run_id"
    mkdir -p "$BENCH_STATE/ko-base" "$KOCACHE"
    printf 'FROM scratch\nUSER 65532:65532\n' >"$BENCH_STATE/ko-base/Containerfile"
    podman build --quiet --layers=false --timestamp 0 -t "$base" "$BENCH_STATE/ko-base" \
        >>"$BENCH_STATE/setup.log" 2>&1 || die "building ko's base image $base failed: $(tail -n 5 "$BENCH_STATE/setup.log")"
    printf '%s\n' "$base" >>"$(made_file)"
    podman push --quiet --format oci "$base" "oci:$KOCACHE/img:bench-base" >>"$BENCH_STATE/setup.log" 2>&1 ||
        die "podman push of $base into ko's cache $KOCACHE/img failed: $(tail -n 5 "$BENCH_STATE/setup.log")"
    remove_images "$base"
    digest=$(python3 -c '
import json, sys
index = json.load(open(sys.argv[1]))
print(next(m["digest"] for m in index["manifests"]
           if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "bench-base"))
' "$KOCACHE/img/index.json") || die "no bench-base manifest in $KOCACHE/img/index.json"
    {
        printf 'defaultBaseImage: localhost/bench-ko-base@%s\n' "$digest"
        cat "$repo/xtask/benches/.ko.yaml"
    } >"$copy/.ko.yaml"
    printf 'base localhost/bench-ko-base@%s; ko %s\n' "$digest" "$("$ko_bin" version 2>/dev/null || echo '(version unknown)')"
fi

# ---------------------------------------------------------------------------------------------
# The commands, each as the user would type it (output to a log instead of the terminal)

goarch=$(go env GOARCH)
log() { printf '>>%q 2>&1' "$BENCH_STATE/$1.log"; }
xtask_cmd="cargo xtask build-images --coverage $(log xtask)"
make_cmd="make images IMAGE_REPO=$BENCH_MAKE_REPO IMAGE_TAG=$run_id $(log make)"
# ko builds for linux/amd64 unless GOOS and GOARCH say otherwise; the images run on this host.
ko_cmd="GOOS=linux GOARCH=$goarch $(printf '%q' "$ko_bin") build --push=false --tarball=$(printf '%q' "$BENCH_STATE/ko.tar") --base-import-paths ./cmd/datastorage ./cmd/gateway $(log ko) && podman load -i $(printf '%q' "$BENCH_STATE/ko.tar") $(log ko)"
xtask_container_cmd="BUILDER_IMAGE=$standin BASE_IMAGE=scratch cargo xtask build-images --coverage --build-mode container $(log xtask-container)"
make_container_cmd="make images-container IMAGE_REPO=$BENCH_MAKE_REPO IMAGE_TAG=$run_id BUILDER_IMAGE=$standin BASE_IMAGE=scratch $(log make-container)"
make_docker_cmd="make images ENGINE=docker IMAGE_REPO=$BENCH_MAKE_REPO IMAGE_TAG=$run_id $(log make-docker)"
make_docker_container_cmd="DOCKER_BUILDKIT=1 make images-container ENGINE=docker IMAGE_REPO=$BENCH_MAKE_REPO IMAGE_TAG=$run_id BUILDER_IMAGE=$standin BASE_IMAGE=scratch $(log make-docker-container)"


# Display name, timed command and --prepare-step tool of each column's tool.
declare -A label=(
    [xtask]="xtask" [make]="Makefile" [ko]="ko (tarball)" [make-docker]="Makefile (docker)"
    [xtask-container]="xtask" [make-container]="Makefile"
    [make-docker-container]="Makefile (docker)"
)
declare -A command=(
    [xtask]=$xtask_cmd [make]=$make_cmd [ko]=$ko_cmd [make-docker]=$make_docker_cmd
    [xtask-container]=$xtask_container_cmd [make-container]=$make_container_cmd
    [make-docker-container]=$make_docker_container_cmd
)
declare -A prep_tool=(
    [xtask]=xtask [make]=make [ko]=ko [make-docker]=make-docker [xtask-container]=xtask
    [make-container]=make [make-docker-container]=make-docker
)

elapsed_since() {
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

# Runs a tool once, untimed; on a failure shows the end of its log and stops.
once() {
    local tool=$1 started=$EPOCHREALTIME
    if ! bash -c "${command[$tool]}"; then
        printf 'error: %s failed; the end of its log:\n' "$tool" >&2
        tail -n 30 "$BENCH_STATE/$tool.log" >&2
        cp "$BENCH_STATE/$tool.log" "$results/" 2>/dev/null || true
        exit 1
    fi
    printf '%-16s %6s s (untimed)\n' "$tool" "$(elapsed_since "$started")"
}

commands_file="$results/commands.txt"
: >"$commands_file"
scenario_names=()
scenario_files=()
# The machine's load average when each scenario started and ended: other work running at the
# same time makes every column slower.
scenario_loads=()

# bench NAME FILE PREPARE-ACTION WARMUP TOOL...: one hyperfine invocation, the tools side by
# side, each with its own --prepare.
bench() {
    local name=$1 file=$2 action=$3 warmup=$4
    shift 4
    local args=(hyperfine --runs "$runs" --warmup "$warmup" --export-json "$results/$file.json")
    local tool
    for tool in "$@"; do
        args+=(--command-name "${label[$tool]}"
            --prepare "bash $(printf '%q' "$self") --prepare-step ${prep_tool[$tool]} $action")
    done
    for tool in "$@"; do
        args+=("${command[$tool]}")
    done
    say "scenario: $name"
    local load_before
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    {
        printf '## %s\n\n' "$name"
        printf 'cd %q &&' "$copy"
        local var
        for var in XTASK_PROJECT_ROOT CARGO_TARGET_DIR GOCACHE KOCACHE KO_DOCKER_REPO \
            CONTAINERS_CONF DOCKER_HOST BENCH_STATE BENCH_RUN_ID BENCH_MAKE_REPO; do
            printf ' %s=%q' "$var" "${!var-}"
        done
        printf ' \\\n   '
        printf ' %q' "${args[@]}"
        printf '\n\n'
    } >>"$commands_file"
    if ! "${args[@]}"; then
        for tool in "$@"; do
            [ ! -f "$BENCH_STATE/$tool.log" ] || cp "$BENCH_STATE/$tool.log" "$results/"
        done
        die "scenario '$name' failed: a build exited non-zero (its log is in $results)"
    fi
    scenario_names+=("$name")
    scenario_files+=("$results/$file.json")
    scenario_loads+=("$load_before -> $(cut -d' ' -f1-3 /proc/loadavg)")
}

restore_gateway() {
    cp "$BENCH_STATE/gateway-main.go.orig" "$copy/cmd/gateway/main.go"
}

# The stand-in for the UBI9 go-toolset image, as xtask/tests/real_build_images.rs builds it:
# busybox, a dnf shim and the host's GOROOT in a scratch image. Ours has its own name.
build_standin() {
    local context="$BENCH_STATE/standin-context" goroot entry
    mkdir -p "$context/go"
    cp /bin/busybox "$context/busybox"
    install -m 0755 "$repo/xtask/tests/standin/dnf" "$context/dnf"
    goroot=$(go env GOROOT)
    for entry in "$goroot"/*; do
        case ${entry##*/} in
        api | doc | test | misc) ;; # documentation and the toolchain's own tests
        *) cp -a "$entry" "$context/go/" ;;
        esac
    done
    printf '%s\n' "$standin" >>"$(made_file)"
    # --layers=false: no intermediate images to clean up.
    podman build --layers=false --label "xtask-bench.run=$run_id" \
        -f "$repo/xtask/tests/standin/builder.Dockerfile" -t "$standin" "$context" >>"$BENCH_STATE/setup.log" 2>&1 ||
        die "building the stand-in builder image failed: $(tail -n 5 "$BENCH_STATE/setup.log")"
    if [ -z "$docker_reason" ]; then
        # BuildKit keeps no intermediate images either.
        DOCKER_BUILDKIT=1 docker build -f "$repo/xtask/tests/standin/builder.Dockerfile" -t "$standin" "$context" >>"$BENCH_STATE/setup.log" 2>&1 ||
            die "building the stand-in builder image with docker failed: $(tail -n 5 "$BENCH_STATE/setup.log")"
    fi
    rm -rf "$context"
}

say "first builds: fill the Go cache, podman's store and ko's cache for every tool"
host_tools=(xtask make)
[ -n "$docker_reason" ] || host_tools+=(make-docker)
[ -n "$ko_reason" ] || host_tools+=(ko)
for tool in "${host_tools[@]}"; do
    once "$tool"
done

bench "nothing changed (warm)" 1-nothing-changed none 1 "${host_tools[@]}"
bench "one line changed in cmd/gateway" 2-one-line-changed change 1 "${host_tools[@]}"
restore_gateway
bench "images removed, Go cache warm" 3-images-removed remove 1 "${host_tools[@]}"
if [ "$cold" = 1 ]; then
    bench "images removed, Go cache empty" 4-images-removed-go-cache-empty remove-cold 0 "${host_tools[@]}"
fi
if [ "$container" = 1 ]; then
    say "container mode: stand-in builder image $standin"
    started=$EPOCHREALTIME
    build_standin
    printf 'built in %s s\n' "$(elapsed_since "$started")"
    container_tools=(xtask-container make-container)
    [ -n "$docker_reason" ] || container_tools+=(make-docker-container)
    for tool in "${container_tools[@]}"; do
        once "$tool"
    done
    bench "container mode, one line changed" 5-container-one-line-changed change 0 \
        "${container_tools[@]}"
    restore_gateway
fi

# ---------------------------------------------------------------------------------------------
# The table

{
    printf '# build-images benchmark, %s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'Medians of %s runs (hyperfine), seconds. ' "$runs"
    printf 'Checkout %s%s; %s; podman %s; %s; %s; %s cores.\n\n' \
        "$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')" \
        "$(go version | awk '{print $3}')" "$(podman version --format '{{.Client.Version}}')" \
        "$([ -n "$docker_reason" ] && echo "docker: skipped, $docker_reason" || docker version --format 'docker daemon {{.Server.Version}}, client {{.Client.Version}}')" \
        "$([ -n "$ko_reason" ] && echo "ko: skipped, $ko_reason" || echo "ko $("$ko_bin" version 2>/dev/null)")" \
        "$(nproc)"
    python3 - "${scenario_names[@]}" -- "${scenario_files[@]}" <<'PY'
import json, sys

args = sys.argv[1:]
split = args.index("--")
names, files = args[:split], args[split + 1:]
columns = ["xtask", "Makefile", "Makefile (docker)", "ko (tarball)"]

def cell(value):
    return "n/a" if value is None else f"{value:.2f} s"

def ratio(a, b):
    return "n/a" if a is None or b is None else f"{a / b:.2f}"

print("| scenario | " + " | ".join(columns)
      + " | xtask ÷ Makefile | xtask ÷ Makefile (docker) | xtask ÷ ko |")
print("| --- | " + " | ".join("---:" for _ in columns) + " | ---: | ---: | ---: |")
for name, path in zip(names, files):
    with open(path) as f:
        results = {r["command"]: r["median"] for r in json.load(f)["results"]}
    medians = [results.get(c) for c in columns]
    print(f"| {name} | " + " | ".join(cell(m) for m in medians)
          + f" | {ratio(medians[0], medians[1])} | {ratio(medians[0], medians[2])}"
          + f" | {ratio(medians[0], medians[3])} |")
PY
    printf '\nLoad average (1, 5, 15 min) at the start and the end of each scenario (%s cores):\n\n' "$(nproc)"
    for i in "${!scenario_names[@]}"; do
        printf -- '- %s: %s\n' "${scenario_names[$i]}" "${scenario_loads[$i]}"
    done
    printf '\nCommands (the hyperfine invocations, in the scratch copy):\n\n```\n'
    cat "$commands_file"
    printf '```\n'
} >"$results/summary.md"

say "results ($results)"
cat "$results/summary.md"

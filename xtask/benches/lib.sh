# shellcheck shell=bash
# What build-images.sh and xtask-breakdown.sh share: messages, the tools they need, and podman
# with the repository's settings. Sourced; `repo` is the repository root.

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

usage_error() {
    printf 'error: %s (see --help)\n' "$*" >&2
    exit 2
}

# need_count FLAG VALUE: VALUE is a whole number >= 1, else a usage error naming FLAG.
need_count() {
    case $2 in
    '' | *[!0-9]* | 0) usage_error "$1 takes a whole number >= 1, not '$2'" ;;
    esac
}

# need_tools HINT TOOL...: every TOOL on PATH, else one error naming the missing ones and HINT.
need_tools() {
    local hint=$1 tool missing=()
    shift
    # Go's release tarball lives in /usr/local/go; a non-login shell may not have it on PATH.
    if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
        PATH="$PATH:/usr/local/go/bin"
    fi
    for tool in "$@"; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] || die "not on PATH: ${missing[*]} ($hint)"
}

# podman here needs runc and lower default ulimits: the repository's settings, as in CI.
use_repo_podman_settings() {
    : "${repo:?lib.sh needs repo set to the repository root}"
    if [ -z "${CONTAINERS_CONF:-}" ] && [ -f "$repo/.ci/containers.conf" ]; then
        export CONTAINERS_CONF="$repo/.ci/containers.conf"
    fi
    podman info --format '{{.Host.OCIRuntime.Name}}' >/dev/null 2>&1 ||
        die "podman does not answer (\`podman info\` fails); where podman needs runc and lower ulimits: export CONTAINERS_CONF=$repo/.ci/containers.conf"
}

#!/usr/bin/env bash
# Builds the stand-in for docker.io/library/redis:7.4-alpine (redis.Dockerfile)
# into the engine's store under that very reference, unless an image of that
# reference is already there (then it does nothing: a real pulled image is
# kept as it is). Needs Debian's redis-server on this machine:
#   apt-get install -y redis-server
# Usage: xtask/tests/standin/build-redis.sh [podman|docker]   (default podman)
set -euo pipefail

engine=${1:-podman}
image=docker.io/library/redis:7.4-alpine
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)

if "$engine" image inspect "$image" >/dev/null 2>&1; then
    echo "$image is already in $engine's store"
    exit 0
fi

server=$(command -v redis-server || true)
if [ -z "$server" ]; then
    echo "error: redis-server is not installed, so the stand-in for $image cannot be built: run \`apt-get install -y redis-server\`" >&2
    exit 1
fi
# Debian's redis-server is a symlink to redis-check-rdb, which picks its mode from
# its name: copy the file under the server's name.
server=$(readlink -f "$server")

mkdir -p "$root/target"
context=$(mktemp -d "$root/target/standin-redis.XXXXXX")
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/rootfs/usr/local/bin" "$context/data"
cp "$server" "$context/rootfs/usr/local/bin/redis-server"
# The libraries and the dynamic loader it links, at the same paths.
libs=$(ldd "$server" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
if [ -z "$libs" ]; then
    echo "error: ldd $server names no libraries: is it a Linux binary of this machine? reinstall redis-server" >&2
    exit 1
fi
for lib in $libs; do
    cp --parents -L "$lib" "$context/rootfs/"
done

layers=()
# podman keeps an intermediate image per instruction unless told not to.
[ "$(basename "$engine")" = podman ] && layers=(--layers=false)
"$engine" build "${layers[@]}" -q -f "$here/redis.Dockerfile" -t "$image" "$context" >/dev/null
echo "built $image (stand-in: $("$context/rootfs/usr/local/bin/redis-server" --version | cut -d' ' -f1-3))"

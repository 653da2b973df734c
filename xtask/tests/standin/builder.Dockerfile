# Local stand-in for registry.access.redhat.com/ubi9/go-toolset:1.25, so the
# container build mode can be tested where no registry is reachable:
#   podman build -f docker/gateway-ubi9.Dockerfile \
#     --build-arg BUILDER_IMAGE=localhost/standin-go-builder:test \
#     --build-arg BASE_IMAGE=scratch .
#
# Build context layout (a directory of its own, e.g. under target/):
#   busybox   a static busybox (Debian: busybox-static, /bin/busybox)
#   dnf       xtask/tests/standin/dnf, executable (a shim that exits 0)
#   go/       a copy of the host GOROOT (e.g. /usr/local/go), with bin/,
#             pkg/ and src/ (api/, doc/, test/ may be left out)
# Build:
#   podman build -f xtask/tests/standin/builder.Dockerfile \
#     -t localhost/standin-go-builder:test <context dir>
FROM scratch
COPY busybox /bin/busybox
# /bin/sh and the other applets; --install needs its target directories.
RUN ["/bin/busybox", "mkdir", "-p", "/usr/bin", "/sbin", "/usr/sbin", "/usr/local/bin", "/root", "/tmp"]
RUN ["/bin/busybox", "--install", "-s"]
RUN ["/bin/busybox", "chmod", "1777", "/tmp"]
# The users of the real image (root, and `default` as 1001): docker 20.10's BuildKit looks
# up even a numeric USER in /etc/passwd ("unable to find user 0" without one).
RUN ["/bin/sh", "-c", "echo 'root:x:0:0:root:/root:/bin/sh' >/etc/passwd && echo 'default:x:1001:0::/opt/app-root/src:/bin/sh' >>/etc/passwd && echo 'root:x:0:' >/etc/group"]
COPY dnf /usr/local/bin/dnf
COPY go /usr/local/go
# The real image's Go honours go.mod's toolchain line by downloading; here
# nothing can be downloaded, so use the Go that is installed.
ENV PATH=/usr/local/go/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root \
    GOTOOLCHAIN=local
USER 1001
WORKDIR /opt/app-root/src

# datastorage image, built hermetically in a container (`cargo xtask build-images
# --build-mode container`, CI, releases). The builder is the current UBI9 Go
# toolset; the runtime stage is UBI9 minimal with nothing but the binary.
#
# BUILDER_IMAGE and BASE_IMAGE are build arguments so tests can substitute
# local stand-in images (no registry is reachable there). The runtime stage
# has no RUN, so BASE_IMAGE=scratch works too. gateway-ubi9.Dockerfile and
# datastorage-ubi9.Dockerfile must name the same image tags (the
# lint-dockerfiles task checks for drift).
ARG BUILDER_IMAGE=registry.access.redhat.com/ubi9/go-toolset:1.25
ARG BASE_IMAGE=registry.access.redhat.com/ubi9/ubi-minimal:9.6

FROM ${BUILDER_IMAGE} AS builder
USER 0
# No `dnf update`: it upgraded ~58 packages on every build (10 minutes per
# image) and made builds unreproducible. Pin a newer BUILDER_IMAGE instead.
RUN dnf install -y git ca-certificates tzdata && dnf clean all
WORKDIR /opt/app-root/src
# Module files first, so the download layer is reused until they change.
# go.sum* matches nothing while the module has no dependencies; that is fine.
# Go's build and module caches live in cache mounts (podman and docker both keep them between
# builds): a one-line change recompiles one package, not the standard library.
ENV GOCACHE=/var/cache/go-build GOMODCACHE=/var/cache/go-mod
COPY go.mod go.sum* ./
RUN --mount=type=cache,target=/var/cache/go-mod go mod download
COPY cmd/ cmd/
COPY internal/ internal/
# Release default: no paths, no symbols. For coverage builds the xtask passes
# --build-arg GOFLAGS="-cover -covermode=atomic -coverpkg=example.com/gateway-e2e/... -tags=e2ecoverage"
# (no -s: keep symbols). The ARG is in the environment of RUN, and go reads
# GOFLAGS from there. Declared after `go mod download` so that layer is
# shared by release and coverage builds.
ARG GOFLAGS="-trimpath -ldflags=-s"
RUN --mount=type=cache,target=/var/cache/go-build --mount=type=cache,target=/var/cache/go-mod \
    CGO_ENABLED=0 go build -o /tmp/out/datastorage ./cmd/datastorage

FROM ${BASE_IMAGE}
COPY --from=builder /tmp/out/datastorage /usr/local/bin/datastorage
USER 1001
ENTRYPOINT ["/usr/local/bin/datastorage"]

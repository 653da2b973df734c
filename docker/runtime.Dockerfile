# Runtime image for a binary built on the host (`cargo xtask build-images`,
# host mode: `CGO_ENABLED=0 go build [-cover ...]`, static).
#
# Build context: a directory holding only the binary, named after the service:
#   podman build -f docker/runtime.Dockerfile --build-arg SERVICE=gateway <dir>
# BASE_IMAGE defaults to scratch: a static Go binary needs nothing else.
ARG BASE_IMAGE=scratch
FROM ${BASE_IMAGE}
ARG SERVICE
COPY ${SERVICE} /service
# Non-root, numeric so it needs no /etc/passwd (65532 is the usual "nonroot").
USER 65532:65532
ENTRYPOINT ["/service"]

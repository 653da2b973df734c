# Local stand-in for docker.io/library/redis:7.4-alpine, so the datastorage
# suite can run where no registry is reachable. Built by build-redis.sh (read it
# for the build context) under the reference a user would pull; nothing that
# runs it knows it is a stand-in.
#
# What it keeps of the real image: redis-server on 6379 as the entrypoint, so
# arguments (a Deployment's `args`) are redis-server options; protected mode
# off, as the real image compiles it (it serves other pods without a
# password); uid 999 (the real image's `redis`) in /data, a VOLUME (podman
# kube play gives it an anonymous volume, which kube down removes). What
# differs: the binary is Debian's redis-server (7.0 on bookworm), with the
# shared libraries it needs, on scratch; no shell, no docker-entrypoint.sh.
FROM scratch
COPY rootfs/ /
COPY --chown=999:999 data/ /data/
ENV PATH=/usr/local/bin:/usr/bin:/bin
VOLUME /data
WORKDIR /data
USER 999:999
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-server", "--protected-mode", "no"]

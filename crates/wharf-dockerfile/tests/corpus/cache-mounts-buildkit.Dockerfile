# syntax=docker/dockerfile:1
FROM debian:bookworm
RUN rm -f /etc/apt/apt.conf.d/docker-clean
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt,sharing=locked \
    apt-get update && apt-get install -y --no-install-recommends gcc
RUN --mount=type=cache,target=/root/.cache/pip pip install numpy
RUN --mount=type=secret,id=npmrc,target=/root/.npmrc npm ci

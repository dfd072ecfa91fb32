#!/usr/bin/env bash
# End-to-end test of the smart build cache with a real Docker engine (classic builder) and
# wharf's registry: `wharf cache plan` predicts the key of every step exactly as the engine
# then records it, and the steps the engine serves from cache when given the planned image
# as --cache-from are exactly the steps the plan said.
#
# Images are made here: the base is `docker import` of a rootfs holding Debian's static
# busybox (so RUN steps run), nothing is fetched from the internet.
#
# Usage: WHARF=/path/to/wharf tests/e2e/build.sh   (needs root, dockerd, busybox-static)
#   E2E_KEEP=1  keep the scratch directory for inspection
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init e2e-build

export DOCKER_BUILDKIT=0

start_wharf wharf
REG=$WHARF_STARTED_ADDR
start_dockerd e2e-build --insecure-registry "$REG"

# history_keys IMAGE: the created_by of each history entry, oldest first, one per line.
history_keys() {
    curl -sS --unix-socket "$WORK/docker.sock" "http://engine/images/$1/history" |
        jq -r 'reverse | .[].CreatedBy'
}

# plan_keys JSON: the planned keys, one per line (unknown steps as "?").
plan_keys() { jq -r '.steps[] | (.key // "?")' "$1"; }

# Base image: busybox as /bin/sh and its applets, imported, pushed to wharf.
busybox_base "$REG/base/busybox:1"
run_quiet "$WORK/push-base.log" "$WHARF" push --quiet "docker-daemon:$REG/base/busybox:1" "$REG/base/busybox:1"

# ---------------------------------------------------------------------------------------
# 1. Every instruction's key, predicted before the build, equals what the engine records.
# ---------------------------------------------------------------------------------------
CTX=$WORK/app
mkdir -p "$CTX/src/lib" "$CTX/conf" "$CTX/logs"
echo 'int main;' >"$CTX/src/main.c"
echo 'x' >"$CTX/src/lib/x.c"
echo 'a=1' >"$CTX/conf/a.conf"
echo 'b=2' >"$CTX/conf/b.conf"
echo 'noise' >"$CTX/logs/run.log"
echo 'v1' >"$CTX/VERSION"
chmod 0755 "$CTX/VERSION"
ln -s VERSION "$CTX/version-link"
printf 'logs\n*.tmp\n' >"$CTX/.dockerignore"
echo 'scratch' >"$CTX/junk.tmp"
cat >"$CTX/Dockerfile" <<EOF
ARG BASE=$REG/base/busybox:1
FROM \$BASE
MAINTAINER wharf tests
ENV APP=/app GREETING="hello world" LEGACY_FREE=1
ARG MODE=release
ARG UNUSED
LABEL org.example.mode=\$MODE "quoted key"=v
WORKDIR \$APP
RUN echo "\$GREETING in \$MODE" > greeting && \\
    mkdir -p out
COPY VERSION ./
COPY version-link /app/link
COPY src/ /app/src/
COPY conf/*.conf /etc/app/
COPY --chown=1:1 VERSION src/main.c /app/multi/
COPY . /ctx
ADD conf/a.conf /etc/added.conf
RUN ["/bin/sh", "-c", "echo exec form > exec.txt"]
EXPOSE 8080 443/tcp
USER root
VOLUME /data /cache
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD echo ok
ONBUILD RUN echo child
SHELL ["/bin/sh", "-e", "-c"]
RUN echo after shell > shell.txt
CMD echo serving \$APP
ENTRYPOINT ["/bin/sh", "-c"]
EOF
run_quiet "$WORK/plan1.log" "$WHARF" cache plan --registry "$REG" --build-arg MODE=debug --json "$CTX"
cp "$WORK/plan1.log" "$WORK/plan1.json"
run_quiet "$WORK/build1.log" docker build --build-arg MODE=debug -t "$REG/app/one:1" "$CTX"
base_steps=$(jq -r '.base.steps' "$WORK/plan1.json")
history_keys "$REG/app/one:1" | tail -n +"$((base_steps + 1))" >"$WORK/engine1.keys"
plan_keys "$WORK/plan1.json" >"$WORK/plan1.keys"
if diff -u "$WORK/engine1.keys" "$WORK/plan1.keys" >"$WORK/keys1.diff"; then
    pass "the plan's $(wc -l <"$WORK/plan1.keys") keys are the ones the engine recorded"
else
    fail "planned keys differ from the engine's history:"
    cat "$WORK/keys1.diff" >&2
fi

# ---------------------------------------------------------------------------------------
# 2. The steps the plan says the registry's best image serves are the steps the engine then
#    takes from cache, on an engine that holds only the base and the planned image.
# ---------------------------------------------------------------------------------------
run_quiet "$WORK/push1.log" "$WHARF" push --quiet "docker-daemon:$REG/app/one:1" "$REG/app/one:1"

# cached_by_engine TAG LOG: build $CTX with the planned candidate as --cache-from after
# forgetting every other image; prints how many steps the engine took from cache.
cached_by_engine() {
    local plan=$1 log=$2 repo digest
    repo=$(jq -r '.candidate.repository // empty' "$plan")
    digest=$(jq -r '.candidate.digest // empty' "$plan")
    docker image ls -q --filter "reference=$REG/app/*" | sort -u | xargs -r docker rmi -f >/dev/null
    docker image prune -f >/dev/null
    local from=()
    if [[ -n "$repo" ]]; then
        run_quiet "$log.pull" "$WHARF" pull --quiet "$REG/$repo@$digest" "docker-daemon:$REG/$repo:cache"
        from=(--cache-from "$REG/$repo:cache")
    fi
    run_quiet "$log" docker build --build-arg MODE=debug "${from[@]}" -t "$REG/app/one:next" "$CTX"
    grep -c 'Using cache' "$log" || true
}

# An ignored file changes: nothing else does, every step is planned and served from cache.
echo 'more noise' >>"$CTX/logs/run.log"
echo 'more scratch' >"$CTX/junk.tmp"
run_quiet "$WORK/plan2.log" "$WHARF" cache plan --registry "$REG" --build-arg MODE=debug --json "$CTX"
cp "$WORK/plan2.log" "$WORK/plan2.json"
planned=$(jq -r '.steps_cached' "$WORK/plan2.json")
expect_eq ".dockerignored changes keep every key: steps planned from cache" "$planned" 25
expect_eq "the engine serves the planned steps from cache" "$(cached_by_engine "$WORK/plan2.json" "$WORK/build2.log")" "$planned"

# A source of the third COPY changes: the match stops there.
echo 'int main(void) { return 0; }' >"$CTX/src/main.c"
run_quiet "$WORK/plan3.log" "$WHARF" cache plan --registry "$REG" --build-arg MODE=debug --json "$CTX"
cp "$WORK/plan3.log" "$WORK/plan3.json"
planned=$(jq -r '.steps_cached' "$WORK/plan3.json")
stop=$(jq -r '[.steps[].instruction] | index("COPY src/ /app/src/")' "$WORK/plan3.json")
expect_eq "a changed COPY source stops the plan at that step" "$planned" "$stop"
expect_eq "the engine serves exactly the planned steps" "$(cached_by_engine "$WORK/plan3.json" "$WORK/build3.log")" "$planned"

# ---------------------------------------------------------------------------------------
# 3. wharf build --push: the planned cache, the layers pushed as steps commit, the manifest
#    last; the same image as docker build + wharf push.
# ---------------------------------------------------------------------------------------
docker image ls -q --filter "reference=$REG/app/*" | sort -u | xargs -r docker rmi -f >/dev/null
docker image prune -f >/dev/null
run_quiet "$WORK/wbuild.log" "$WHARF" build --json --push -t "$REG/app/two:1" --build-arg MODE=debug "$CTX"
tail -n 1 "$WORK/wbuild.log" >"$WORK/wbuild.json"
expect_eq "wharf build took the planned steps from cache" "$(jq -r .steps_cached "$WORK/wbuild.json")" "$(jq -r .steps_cached "$WORK/plan3.json")"
expect_eq "it pulled only the layers beyond the base for cache" "$(jq -r .bytes_pulled_for_cache "$WORK/wbuild.json")" "$(jq -r .bytes_to_pull "$WORK/plan3.json")"
early=$(jq -r .layers_pushed_early "$WORK/wbuild.json")
if ((early >= 3)); then pass "layers were pushed while the build ran ($early)"; else fail "only $early layers pushed while the build ran"; fi
http -H "Accept: $DOCKER_V2, $OCI_MANIFEST" "http://$REG/v2/app/two/manifests/1" >"$WORK/two.manifest"
pushed_config=$(jq -r .config.digest "$WORK/two.manifest")
expect_eq "the pushed image is the engine's image (config digest)" "$pushed_config" "$(image_id "$REG/app/two:1")"
run_quiet "$WORK/push-ref.log" "$WHARF" push --quiet "docker-daemon:$REG/app/two:1" "$REG/app/ref:1"
expect_eq "and the same as wharf push of it (manifest digest)" \
    "$(http -I -H "Accept: $DOCKER_V2, $OCI_MANIFEST" "http://$REG/v2/app/ref/manifests/1" | digest_header)" \
    "$(jq -r .digest "$WORK/wbuild.json")"

# A step failing mid-way: layers before it may be on the registry, no manifest is.
FAILCTX=$WORK/fail
mkdir -p "$FAILCTX"
head -c 200000 /dev/urandom >"$FAILCTX/data.bin"
printf '%s\n' "FROM $REG/base/busybox:1" 'COPY data.bin /data.bin' 'RUN echo one > /one' 'RUN false' \
    'RUN echo never > /never' >"$FAILCTX/Dockerfile"
if "$WHARF" build --push -t "$REG/app/fail:1" "$FAILCTX" >"$WORK/wfail.log" 2>&1; then
    fail "a failing build step fails wharf build"
else
    pass "a failing build step fails wharf build: $(grep -m1 'the build failed' "$WORK/wfail.log" | cut -c1-80)"
fi
grep -q '^\[ *3\] built' "$WORK/wfail.log" || fail "the steps before the failure ran"
expect_eq "and leaves no manifest on the registry" \
    "$(http -o /dev/null -w '%{http_code}' -I "http://$REG/v2/app/fail/manifests/1")" 404

# ---------------------------------------------------------------------------------------
# 4. A mirror-baked base: the engine pulls pkgmirror/<preset>/<image> and gets the image
#    with its package sources on the mirror.
# ---------------------------------------------------------------------------------------
mkdir -p "$WORK/distro/etc/apk" "$WORK/distro/etc/apt"
printf '%s\n' https://dl-cdn.alpinelinux.org/alpine/v3.20/main https://dl-cdn.alpinelinux.org/alpine/v3.20/community \
    >"$WORK/distro/etc/apk/repositories"
echo 'deb http://deb.debian.org/debian bookworm main' >"$WORK/distro/etc/apt/sources.list"
tar -C "$WORK/distro" -cf "$WORK/distro.tar" .
run_quiet "$WORK/distro-import.log" docker import "$WORK/distro.tar" "$REG/base/distro:1"
run_quiet "$WORK/distro-push.log" "$WHARF" push --quiet "docker-daemon:$REG/base/distro:1" "$REG/base/distro:1"
run_quiet "$WORK/baked-pull.log" docker pull "$REG/pkgmirror/ustc/base/distro:1"
cid=$(docker create "$REG/pkgmirror/ustc/base/distro:1" /nothing)
docker cp "$cid:/etc/apk/repositories" "$WORK/baked-repositories" >/dev/null
docker cp "$cid:/etc/apt/sources.list" "$WORK/baked-sources.list" >/dev/null
docker rm "$cid" >/dev/null
expect_eq "the baked image's apk sources are on the mirror" "$(head -n 1 "$WORK/baked-repositories")" \
    https://mirrors.ustc.edu.cn/alpine/v3.20/main
expect_eq "and its apt sources" "$(cat "$WORK/baked-sources.list")" 'deb http://mirrors.ustc.edu.cn/debian bookworm main'
expect_eq "and pip's index in its environment" \
    "$(docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$REG/pkgmirror/ustc/base/distro:1" | grep '^PIP_INDEX_URL=')" \
    PIP_INDEX_URL=https://mirrors.ustc.edu.cn/pypi/simple
expect_eq "its layers are the source's plus one" \
    "$(image_layers "$REG/pkgmirror/ustc/base/distro:1" | head -n 1)" "$(image_layers "$REG/base/distro:1")"

# ---------------------------------------------------------------------------------------
# 5. wharf build --mirror-preset: the Dockerfile is built as `wharf fix` rewrites it for the
#    mirrors (here: pip's index), the file on disk is left alone.
# ---------------------------------------------------------------------------------------
PIPCTX=$WORK/pip
mkdir -p "$PIPCTX"
cat >"$PIPCTX/Dockerfile" <<EOF
FROM $REG/base/busybox:1
RUN printf '#!/bin/sh\necho "pip \$* from \$(env | grep _INDEX_)" >/pip.log\n' >/bin/pip && chmod +x /bin/pip
RUN pip install flask
EOF
cp "$PIPCTX/Dockerfile" "$WORK/pip.Dockerfile.before"
run_quiet "$WORK/wpip.log" "$WHARF" build --mirror-preset aliyun -t "$REG/app/pip:1" "$PIPCTX"
cid=$(docker create "$REG/app/pip:1" /nothing)
docker cp "$cid:/pip.log" "$WORK/pip.log" >/dev/null
docker rm "$cid" >/dev/null
expect_eq "--mirror-preset: the build's pip used the mirror" "$(cat "$WORK/pip.log")" \
    "pip install flask from PIP_INDEX_URL=https://mirrors.aliyun.com/pypi/simple/"
if cmp -s "$PIPCTX/Dockerfile" "$WORK/pip.Dockerfile.before"; then
    pass "--mirror-preset left the Dockerfile on disk as it was"
else
    fail "--mirror-preset changed the Dockerfile on disk"
fi

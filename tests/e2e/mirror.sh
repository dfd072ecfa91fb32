#!/usr/bin/env bash
# End-to-end test: wharf as a pull-through mirror, with a real Docker engine and skopeo.
#
# Two wharf processes: an origin (a plain registry we push to) and a mirror whose default
# upstream is the origin (`--upstream http://ORIGIN`) and which also knows the origin under
# the name `second` (`--upstream second=http://ORIGIN`). A private dockerd is started with
# `--registry-mirror http://MIRROR`, so a Docker-Hub-style name (`e2emirror:v1`, i.e.
# docker.io/library/e2emirror:v1) can only be pulled through the mirror: there is no
# internet, and the image exists nowhere else.
#
# What it shows:
#   1. docker pull through the mirror gives the pushed image (same ID, same digest, same
#      bytes), and the origin serves each blob exactly once;
#   2. a second pull (after rmi) is served from the mirror's cache: no blob GET reaches
#      the origin;
#   3. the second upstream name (`/v2/second/<repo>/...`) works for skopeo inspect and
#      skopeo copy, with the origin's digests; pushing into it is refused;
#   4. outage: with the origin stopped, the cached tag still pulls (served stale, counted
#      in the metrics), and an image that was never cached fails with a clear error.
#
# Like docker.sh, it starts its own dockerd (private data root, exec root, socket and pid
# file) and touches no system daemon; nothing comes from the internet.
#
# Usage: WHARF=/path/to/wharf tests/e2e/mirror.sh
#   WHARF       wharf binary (default: target/release/wharf if built, else target/debug/wharf)
#   DOCKER_CLI  docker client to use (default: docker from PATH)
#   DOCKERD     docker daemon to start (default: /usr/sbin/dockerd from the docker.io package)
#   E2E_KEEP=1  keep the scratch directory (logs, daemon data) for inspection
set -euo pipefail

NAME=e2e-mirror
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -z "${WHARF:-}" ]]; then
    WHARF=$REPO_ROOT/target/release/wharf
    [[ -x "$WHARF" ]] || WHARF=$REPO_ROOT/target/debug/wharf
fi
DOCKER_CLI=${DOCKER_CLI:-docker}
DOCKERD=${DOCKERD:-/usr/sbin/dockerd}

PASSED=0
FAILED=0
ORIGIN_PID=
MIRROR_PID=
DOCKERD_PID=
MAIN_PID=$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/wharf-e2e-mirror.XXXXXX")

# The image, as Docker Hub would name it, and the repository the mirror asks upstream for.
HUB_IMAGE=e2emirror:v1
UPSTREAM_REPO=library/e2emirror

# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------

pass() { PASSED=$((PASSED + 1)); echo "ok   - $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL - $1" >&2; }

# expect_eq NAME ACTUAL EXPECTED
expect_eq() {
    if [[ "$2" == "$3" ]]; then pass "$1"; else fail "$1: got '$2', want '$3'"; fi
}

# expect_ge NAME ACTUAL MIN (integers)
expect_ge() {
    if [[ "$2" =~ ^[0-9]+$ ]] && (($2 >= $3)); then pass "$1"; else fail "$1: got '$2', want >= $3"; fi
}

# die MESSAGE [LOG_FILE]: a step the rest of the test depends on failed; stop here.
die() {
    fail "$1"
    if [[ -n "${2:-}" && -f "$2" ]]; then
        echo "---- last lines of $2 ----" >&2
        tail -n 40 "$2" >&2
    fi
    exit 1
}

# run LOG CMD...: run a command with its output saved to LOG (and echoed), dying on failure.
run() {
    local log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        die "command failed: $*" "$log"
    fi
    cat "$log"
}

# ---------------------------------------------------------------------------------------
# Process lifecycle: only processes this script started, by PID
# ---------------------------------------------------------------------------------------

# stop_pid PID: SIGTERM, wait up to 20 s, then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "warning: pid $pid ignored SIGTERM for 20 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    # A background child that is signalled between fork and exec runs this trap too;
    # only the test's own shell may stop processes and delete the scratch directory.
    [[ "$BASHPID" == "$MAIN_PID" ]] || return 0
    set +e
    trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
    if [[ -n "$DOCKERD_PID" ]]; then
        # dockerd's supervised containerd is also ours; remember it in case dockerd
        # has to be killed and cannot take its child down with it.
        local containerd_pid
        containerd_pid=$(cat "$WORK/exec/containerd/containerd.pid" 2>/dev/null)
        stop_pid "$DOCKERD_PID"
        if [[ -n "$containerd_pid" ]] && kill -0 "$containerd_pid" 2>/dev/null; then
            stop_pid "$containerd_pid"
        fi
        # A killed daemon can leave overlay mounts behind; unmount only our own ones
        # (deepest first) before deleting the directory that holds them.
        awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r |
            while read -r m; do umount -l "$m"; done
    fi
    [[ -n "$MIRROR_PID" ]] && stop_pid "$MIRROR_PID"
    [[ -n "$ORIGIN_PID" ]] && stop_pid "$ORIGIN_PID"
    if ((rc != 0 && FAILED == 0)); then
        FAILED=1 # an unexpected command failure under set -e
    fi
    if ((FAILED > 0)); then
        local f
        for f in origin.log mirror.log; do
            if [[ -s "$WORK/$f" ]]; then
                echo "---- last lines of $f ----" >&2
                tail -n 30 "$WORK/$f" >&2
            fi
        done
    fi
    if [[ "${E2E_KEEP:-0}" == 1 ]]; then
        echo "scratch directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    echo "$NAME: $PASSED passed, $FAILED failed"
    ((FAILED == 0)) || exit 1
    exit 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_wharf NAME ARGS...: run wharf on a free loopback port, logging every request to
# $WORK/NAME.log; sets WHARF_STARTED_PID and WHARF_STARTED_ADDR=127.0.0.1:PORT.
start_wharf() {
    local name=$1
    shift
    [[ -x "$WHARF" ]] || die "wharf binary not found or not executable: $WHARF (set WHARF=...)"
    : >"$WORK/$name.out"
    # A WHARF_CONFIG from the caller's environment must not change what we test.
    # Request-level debug logs are what the origin's blob GETs are counted from.
    env -u WHARF_CONFIG -u WHARF_LISTEN -u WHARF_ROOT -u RUST_LOG NO_COLOR=1 \
        "$WHARF" serve --listen 127.0.0.1:0 --root "$WORK/$name-root" --log info,wharf_registry=debug "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.log" &
    WHARF_STARTED_PID=$!
    # wharf prints exactly one line once it is bound; its port is our only way to reach it.
    local i line
    for ((i = 0; i < 100; i++)); do
        line=$(head -n 1 "$WORK/$name.out")
        if [[ "$line" =~ ^wharf\ serve:\ listening\ on\ http://(127\.0\.0\.1:[0-9]+)$ ]]; then
            WHARF_STARTED_ADDR=${BASH_REMATCH[1]}
            echo "wharf $name (pid $WHARF_STARTED_PID) listening on $WHARF_STARTED_ADDR"
            return 0
        fi
        kill -0 "$WHARF_STARTED_PID" 2>/dev/null || die "wharf $name exited before listening" "$WORK/$name.log"
        sleep 0.1
    done
    die "wharf $name did not print its listening line within 10 s" "$WORK/$name.log"
}

# start_dockerd: a private Docker daemon whose Docker Hub mirror is our wharf mirror, and
# which knows both wharf ports as insecure (plain HTTP) registries. No bridge, iptables
# or forwarding: it only builds, pushes and pulls images.
start_dockerd() {
    [[ -x "$DOCKERD" ]] || die "dockerd not found at $DOCKERD (apt-get install docker.io)"
    command -v "$DOCKER_CLI" >/dev/null || die "docker client not found: $DOCKER_CLI (apt-get install docker.io)"
    # An empty config file, so that /etc/docker/daemon.json cannot conflict with our flags.
    echo '{}' >"$WORK/daemon.json"
    "$DOCKERD" \
        --config-file "$WORK/daemon.json" \
        --data-root "$WORK/data" \
        --exec-root "$WORK/exec" \
        --pidfile "$WORK/dockerd.pid" \
        --host "unix://$WORK/docker.sock" \
        --containerd-namespace wharf-e2e-mirror \
        --containerd-plugins-namespace wharf-e2e-mirror-plugins \
        --iptables=false --ip-forward=false --bridge=none \
        --registry-mirror "http://$MIRROR" \
        --insecure-registry "$ORIGIN" \
        --insecure-registry "$MIRROR" \
        >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        if "$DOCKER_CLI" info >/dev/null 2>&1; then
            echo "dockerd (pid $DOCKERD_PID) ready: $("$DOCKER_CLI" version -f 'server {{.Server.Version}}, client {{.Client.Version}}')"
            echo "dockerd registry mirrors: $("$DOCKER_CLI" info -f '{{.RegistryConfig.Mirrors}}')"
            return 0
        fi
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            DOCKERD_PID=
            echo "---- last lines of the kernel log ----" >&2
            dmesg 2>/dev/null | tail -n 15 >&2 || true
            die "dockerd exited during startup" "$WORK/dockerd.log"
        fi
        sleep 0.1
    done
    die "dockerd not ready within 30 s" "$WORK/dockerd.log"
}

# ---------------------------------------------------------------------------------------
# Registry helpers
# ---------------------------------------------------------------------------------------

# A proxy from the environment must never see loopback traffic.
http() { curl --noproxy '*' -sS "$@"; }

DOCKER_V2=application/vnd.docker.distribution.manifest.v2+json
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json

# count_lines PATTERN FILE: number of lines matching the extended regex (0 if none).
count_lines() { grep -cE "$1" "$2" || true; }

# log_mark NAME: the current line count of $WORK/NAME.log, to look only at what follows.
log_mark() { wc -l <"$WORK/$1.log"; }

# log_since NAME MARK: the lines of $WORK/NAME.log after MARK.
log_since() { tail -n "+$(($2 + 1))" "$WORK/$1.log"; }

# blob_gets NAME MARK [DIGEST]: request-log lines for GETs of blobs (of DIGEST if given)
# after MARK.
blob_gets() {
    local any='sha256:[0-9a-f]{64}'
    log_since "$1" "$2" | grep -E "request method=GET path=/v2/.+/blobs/${3:-$any} " || true
}

# metric NAME{LABELS}: the mirror's value for one metric line (0 if absent).
metric() {
    http "http://$MIRROR/metrics" | awk -v m="$1" '$1 == m { v = $2 } END { print v + 0 }'
}

# ---------------------------------------------------------------------------------------
# The image under test (as in docker.sh: no network, no container run)
# ---------------------------------------------------------------------------------------

# build_image TAG: base layer from `docker import`, plus three COPY layers of 1 KiB,
# 256 KiB and 8 MiB of random data.
build_image() {
    local tag=$1
    mkdir -p "$WORK/rootfs/etc" "$WORK/ctx"
    echo "wharf e2e mirror base" >"$WORK/rootfs/etc/motd"
    echo "ID=wharf-e2e-mirror" >"$WORK/rootfs/etc/os-release"
    tar -C "$WORK/rootfs" -cf "$WORK/base.tar" .
    run "$WORK/import.log" "$DOCKER_CLI" import "$WORK/base.tar" e2e-mirror-base:local

    head -c 1024 /dev/urandom >"$WORK/ctx/small.bin"
    head -c $((256 * 1024)) /dev/urandom >"$WORK/ctx/medium.bin"
    head -c $((8 * 1024 * 1024)) /dev/urandom >"$WORK/ctx/big.bin"
    cat >"$WORK/ctx/Dockerfile" <<'EOF'
FROM e2e-mirror-base:local
COPY small.bin /data/small.bin
COPY medium.bin /data/medium.bin
COPY big.bin /data/big.bin
EOF
    DOCKER_BUILDKIT=0 run "$WORK/build.log" "$DOCKER_CLI" build -t "$tag" "$WORK/ctx"
}

image_id() { "$DOCKER_CLI" image inspect -f '{{.Id}}' "$1"; }
image_layers() { "$DOCKER_CLI" image inspect -f '{{range .RootFS.Layers}}{{println .}}{{end}}' "$1" | sed '/^$/d'; }

# push_digest LOG: the manifest digest from docker push's last line.
push_digest() { sed -nE 's/^.*: digest: (sha256:[0-9a-f]{64}) size: [0-9]+$/\1/p' "$1" | tail -n 1; }
# pull_digest LOG: the manifest digest docker pull reports.
pull_digest() { sed -nE 's/^Digest: (sha256:[0-9a-f]{64})$/\1/p' "$1"; }

# rmi_all: forget every image in the daemon, so that the next pull fetches every byte.
rmi_all() {
    local refs
    # By name: untagging removes the legacy builder's intermediate images with them.
    refs=$("$DOCKER_CLI" images --format '{{.Repository}}:{{.Tag}}' | grep -v '<none>' || true)
    if [[ -n "$refs" ]]; then
        # shellcheck disable=SC2086
        run "$WORK/rmi.log" "$DOCKER_CLI" rmi $refs >/dev/null
    fi
    if [[ -n "$("$DOCKER_CLI" images -aq)" ]]; then
        run "$WORK/prune.log" "$DOCKER_CLI" image prune -af >/dev/null
    fi
    expect_eq "${1}no image left in the daemon" "$("$DOCKER_CLI" images -aq | wc -l)" 0
}

# check_pulled_content IMAGE: the 8 MiB file in the pulled image is byte-identical to the
# one we built from (`docker create` + `docker cp`, no container is started).
check_pulled_content() {
    local cid
    cid=$("$DOCKER_CLI" create --network none "$1" /nonexistent)
    "$DOCKER_CLI" cp "$cid:/data/big.bin" - | tar -xO -f - big.bin >"$WORK/big.pulled"
    "$DOCKER_CLI" rm "$cid" >/dev/null
    if cmp -s "$WORK/big.pulled" "$WORK/ctx/big.bin"; then
        pass "$2: 8 MiB file in the pulled image is byte-identical"
    else
        fail "$2: 8 MiB file in the pulled image differs from the original"
    fi
}

# ---------------------------------------------------------------------------------------
# skopeo, isolated from the machine's configuration (as in skopeo.sh)
# ---------------------------------------------------------------------------------------

sk() {
    CONTAINERS_REGISTRIES_CONF="$WORK/registries.conf" \
        skopeo --insecure-policy --registries.d "$WORK/registries.d" --tmpdir "$WORK/sktmp" "$@"
}

# ---------------------------------------------------------------------------------------
# Test steps
# ---------------------------------------------------------------------------------------

setup() {
    command -v skopeo >/dev/null || die "skopeo not installed (apt-get install skopeo)"
    command -v jq >/dev/null || die "jq not installed (apt-get install jq)"
    mkdir -p "$WORK/registries.d" "$WORK/sktmp"
    : >"$WORK/registries.conf"

    start_wharf origin
    ORIGIN_PID=$WHARF_STARTED_PID ORIGIN=$WHARF_STARTED_ADDR
    # A 1 s tag TTL, so that the outage pull really has to revalidate the tag against the
    # (then dead) origin and fall back to the cached manifest, instead of answering from
    # a still fresh tag without asking.
    printf '[mirror]\ntag_ttl_secs = 1\n' >"$WORK/mirror.toml"
    start_wharf mirror --config "$WORK/mirror.toml" \
        --upstream "http://$ORIGIN" --upstream "second=http://$ORIGIN"
    MIRROR_PID=$WHARF_STARTED_PID MIRROR=$WHARF_STARTED_ADDR

    # The client talks to our daemon only, with a private config (no credential helpers).
    export DOCKER_HOST="unix://$WORK/docker.sock" DOCKER_CONFIG="$WORK/docker-config"
    unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
    mkdir -p "$DOCKER_CONFIG"
    start_dockerd
}

# Build, push to the origin, and record what the pulls must give back.
test_push_to_origin() {
    local pushed=$ORIGIN/$UPSTREAM_REPO:v1
    build_image "$pushed" >/dev/null
    IMAGE_ID=$(image_id "$pushed")
    LAYERS=$(image_layers "$pushed")
    local nlayers
    nlayers=$(wc -l <<<"$LAYERS")
    if ((nlayers >= 3)); then pass "built image has $nlayers layers"; else fail "built image has only $nlayers layers"; fi

    run "$WORK/push.log" "$DOCKER_CLI" push "$pushed" >/dev/null
    DIGEST=$(push_digest "$WORK/push.log")
    [[ -n "$DIGEST" ]] || die "no digest in docker push output" "$WORK/push.log"
    pass "pushed $pushed ($DIGEST)"

    http --fail -H "Accept: $DOCKER_V2, $OCI_MANIFEST" -o "$WORK/origin-manifest.json" \
        "http://$ORIGIN/v2/$UPSTREAM_REPO/manifests/$DIGEST"
    CONFIG_DIGEST=$(jq -r .config.digest "$WORK/origin-manifest.json")
    LAYER_DIGESTS=$(jq -r '.layers[].digest' "$WORK/origin-manifest.json")
    ALL_BLOBS=$(printf '%s\n%s\n' "$CONFIG_DIGEST" "$LAYER_DIGESTS")
    NBLOBS=$(wc -l <<<"$ALL_BLOBS")
    expect_eq "origin manifest lists every layer" "$(wc -l <<<"$LAYER_DIGESTS")" "$nlayers"
    expect_eq "origin manifest config is the image" "$CONFIG_DIGEST" "$IMAGE_ID"

    rmi_all "after push: "
}

# docker pull of a Docker Hub name, which only the mirror can answer.
test_cold_pull() {
    local omark mmark d n bad=0
    omark=$(log_mark origin)
    mmark=$(log_mark mirror)
    run "$WORK/pull-cold.log" "$DOCKER_CLI" pull "$HUB_IMAGE"
    expect_eq "cold pull: docker reports the pushed manifest digest" "$(pull_digest "$WORK/pull-cold.log")" "$DIGEST"
    expect_eq "cold pull: image ID equals the pushed one" "$(image_id "$HUB_IMAGE")" "$IMAGE_ID"
    expect_eq "cold pull: layers (diff IDs) equal the pushed ones" "$(image_layers "$HUB_IMAGE")" "$LAYERS"
    check_pulled_content "$HUB_IMAGE" "cold pull"

    # The pull really went through the mirror, under the Hub name's library/ repository.
    # (dockerd 20.10 resolves the tag with a HEAD, then GETs the manifest by digest.)
    expect_ge "cold pull: dockerd asked the mirror for $UPSTREAM_REPO:v1" \
        "$(log_since mirror "$mmark" | grep -cE "request method=(HEAD|GET) path=/v2/$UPSTREAM_REPO/manifests/v1 status=200" || true)" 1

    # The origin served each blob of the image exactly once, and nothing else.
    while read -r d; do
        n=$(blob_gets origin "$omark" "$d" | grep -c 'status=200' || true)
        if [[ "$n" != 1 ]]; then
            echo "origin served blob $d $n times during the cold pull" >&2
            bad=$((bad + 1))
        fi
    done <<<"$ALL_BLOBS"
    expect_eq "cold pull: origin log shows exactly one GET per blob (config + layers)" "$bad" 0
    expect_eq "cold pull: origin saw $NBLOBS blob GETs in all" "$(blob_gets origin "$omark" | wc -l)" "$NBLOBS"
    echo "     origin requests during the cold pull:"
    log_since origin "$omark" | grep -oE 'request method=[A-Z]+ path=[^ ]+ status=[0-9]+' | sed 's/^/       /'
    expect_ge "cold pull: mirror counted $NBLOBS blob misses" "$(metric 'wharf_mirror_misses_total{kind="blob"}')" "$NBLOBS"
}

# The same pull again after rmi: every blob is a mirror cache hit.
test_warm_pull() {
    rmi_all "before warm pull: "
    sleep 1.2 # past the tag TTL: the tag is revalidated (a manifest HEAD), blobs must not be
    local omark hits_before
    omark=$(log_mark origin)
    hits_before=$(metric 'wharf_mirror_hits_total{kind="blob"}')
    run "$WORK/pull-warm.log" "$DOCKER_CLI" pull "$HUB_IMAGE" >/dev/null
    expect_eq "warm pull: docker reports the pushed manifest digest" "$(pull_digest "$WORK/pull-warm.log")" "$DIGEST"
    expect_eq "warm pull: image ID equals the pushed one" "$(image_id "$HUB_IMAGE")" "$IMAGE_ID"
    expect_eq "warm pull: origin saw no blob GET" "$(blob_gets origin "$omark" | wc -l)" 0
    echo "     origin requests during the warm pull:"
    log_since origin "$omark" | grep -oE 'request method=[A-Z]+ path=[^ ]+ status=[0-9]+' | sed 's/^/       /'
    expect_ge "warm pull: mirror counted $NBLOBS more blob hits" \
        "$(($(metric 'wharf_mirror_hits_total{kind="blob"}') - hits_before))" "$NBLOBS"
}

# The second upstream name, through skopeo: /v2/second/library/e2emirror/...
test_second_upstream() {
    local ref="docker://$MIRROR/second/$UPSTREAM_REPO:v1" layout="$WORK/layout" omark
    omark=$(log_mark origin)
    sk inspect --tls-verify=false --no-creds "$ref" >"$WORK/inspect.json" 2>"$WORK/inspect.err" ||
        die "skopeo inspect $ref failed" "$WORK/inspect.err"
    expect_eq "second upstream: skopeo inspect digest is the origin's" "$(jq -r .Digest "$WORK/inspect.json")" "$DIGEST"
    expect_eq "second upstream: skopeo inspect layers are the origin's" \
        "$(jq -r '.Layers[]' "$WORK/inspect.json")" "$LAYER_DIGESTS"
    sk inspect --tls-verify=false --no-creds --raw "$ref" >"$WORK/inspect-raw.json"
    if cmp -s "$WORK/inspect-raw.json" "$WORK/origin-manifest.json"; then
        pass "second upstream: manifest bytes identical to the origin's"
    else
        fail "second upstream: manifest bytes differ from the origin's"
    fi

    # skopeo copy to an OCI layout converts the Docker schema2 manifest to OCI, which also
    # rewrites the config blob (new digests for both); the layers stay. The same copy made
    # straight from the origin is the reference: both layouts must be identical.
    run "$WORK/sk-copy.log" sk copy --src-tls-verify=false --src-no-creds "$ref" "oci:$layout:v1" >/dev/null
    # What the mirror asked the origin for, for the second upstream name (before we talk
    # to the origin ourselves). Blobs are content-addressed and already cached.
    echo "     origin requests caused by skopeo inspect + copy through /v2/second/ (blob GETs: $(blob_gets origin "$omark" | wc -l)):"
    log_since origin "$omark" | grep -oE 'request method=[A-Z]+ path=[^ ]+ status=[0-9]+' | sort | uniq -c | sed 's/^/     /'
    run "$WORK/sk-copy-origin.log" sk copy --src-tls-verify=false --src-no-creds \
        "docker://$ORIGIN/$UPSTREAM_REPO:v1" "oci:$WORK/layout-origin:v1" >/dev/null
    local oci_manifest bad=0 f
    oci_manifest="$layout/blobs/sha256/$(jq -r '.manifests[0].digest' "$layout/index.json" | cut -d: -f2)"
    expect_eq "second upstream: oci layout has the origin's layer digests" \
        "$(jq -r '.layers[].digest' "$oci_manifest")" "$LAYER_DIGESTS"
    expect_eq "second upstream: oci layout manifest digest equals a copy made from the origin" \
        "$(jq -r '.manifests[0].digest' "$layout/index.json")" \
        "$(jq -r '.manifests[0].digest' "$WORK/layout-origin/index.json")"
    expect_eq "second upstream: oci layout holds the same blobs as a copy made from the origin" \
        "$(ls "$layout/blobs/sha256")" "$(ls "$WORK/layout-origin/blobs/sha256")"
    for f in "$layout"/blobs/sha256/*; do
        if [[ "$(sha256sum <"$f" | cut -d' ' -f1)" != "${f##*/}" ]]; then
            echo "blob ${f##*/} in the layout does not hash to its name" >&2
            bad=$((bad + 1))
        fi
    done
    expect_eq "second upstream: every blob in the oci layout hashes to its digest" "$bad" 0

    # A dir: copy keeps the manifest and config untouched: byte-identical to the origin's.
    run "$WORK/sk-copy-dir.log" sk copy --src-tls-verify=false --src-no-creds --preserve-digests \
        "$ref" "dir:$WORK/dircopy" >/dev/null
    if cmp -s "$WORK/dircopy/manifest.json" "$WORK/origin-manifest.json"; then
        pass "second upstream: dir: copy has the origin's manifest bytes"
    else
        fail "second upstream: dir: copy's manifest differs from the origin's"
    fi
    local d
    while read -r d; do
        if [[ "sha256:$(sha256sum <"$WORK/dircopy/${d#sha256:}" | cut -d' ' -f1)" != "$d" ]]; then
            echo "blob $d missing or wrong in the dir: copy" >&2
            bad=$((bad + 1))
        fi
    done <<<"$ALL_BLOBS"
    expect_eq "second upstream: dir: copy has every blob (config + layers) with its digest" "$bad" 0

    # A mirrored namespace is read-only.
    local status
    status=$(http -o "$WORK/push-refused.json" -w '%{http_code}' -X POST \
        "http://$MIRROR/v2/second/$UPSTREAM_REPO/blobs/uploads/")
    expect_eq "second upstream: push into the mirrored namespace is refused (403)" "$status" 403
    expect_eq "second upstream: refusal is a DENIED error" \
        "$(jq -r '.errors[0].code' "$WORK/push-refused.json" 2>/dev/null || head -c 200 "$WORK/push-refused.json")" DENIED
    echo "     mirror: $(cat "$WORK/push-refused.json")"
}

# The origin goes away: what the mirror has cached still pulls; what it has not fails.
test_outage() {
    stop_pid "$ORIGIN_PID"
    ORIGIN_PID=
    if http -o /dev/null "http://$ORIGIN/v2/" 2>/dev/null; then die "origin still answers after being stopped"; fi
    pass "origin stopped"

    rmi_all "outage: "
    sleep 1.2 # past the tag TTL: the mirror must try the origin, fail, and serve its copy
    local stale_before mmark
    stale_before=$(metric wharf_mirror_stale_serves_total)
    mmark=$(log_mark mirror)
    run "$WORK/pull-outage.log" "$DOCKER_CLI" pull "$HUB_IMAGE" >/dev/null
    expect_eq "outage: pull of the cached tag reports the pushed digest" "$(pull_digest "$WORK/pull-outage.log")" "$DIGEST"
    expect_eq "outage: pulled image ID equals the pushed one" "$(image_id "$HUB_IMAGE")" "$IMAGE_ID"
    check_pulled_content "$HUB_IMAGE" "outage"
    expect_ge "outage: mirror counted a stale serve" \
        "$(($(metric wharf_mirror_stale_serves_total) - stale_before))" 1
    echo "     mirror log during the outage pull (warnings and errors):"
    log_since mirror "$mmark" | grep -E ' (WARN|ERROR) ' | sed -E 's/^[^ ]+ +/       /' | head -n 5

    run "$WORK/pull-digest.log" "$DOCKER_CLI" pull "e2emirror@$DIGEST" >/dev/null
    pass "outage: pull by digest works"

    # Never cached: the tag that does not exist, and a repository never pulled.
    local status rc=0
    "$DOCKER_CLI" pull nevercached:v1 >"$WORK/pull-uncached.log" 2>&1 || rc=$?
    if ((rc != 0)); then pass "outage: pull of a never-cached image fails"; else fail "outage: pull of a never-cached image succeeded"; fi
    echo "     docker: $(tr '\n' ' ' <"$WORK/pull-uncached.log")"
    echo "     mirror log for it:"
    grep -E 'nevercached' "$WORK/mirror.log" | sed -E 's/^[^ ]+ +/       /' | head -n 6
    status=$(http -o "$WORK/uncached.json" -w '%{http_code}' \
        -H "Accept: $DOCKER_V2, $OCI_MANIFEST" "http://$MIRROR/v2/library/nevercached/manifests/v1")
    echo "     mirror: HTTP $status $(cat "$WORK/uncached.json")"
    if [[ "$status" =~ ^5[0-9][0-9]$ ]]; then
        pass "outage: mirror answers a never-cached manifest with a 5xx ($status)"
    else
        fail "outage: mirror answers a never-cached manifest with $status, want a 5xx (upstream unreachable)"
    fi
    local msg
    msg=$(jq -r '.errors[0].message' "$WORK/uncached.json" 2>/dev/null || true)
    if [[ "$msg" == *"$ORIGIN"* ]]; then
        pass "outage: the mirror's JSON error names the unreachable upstream"
    else
        fail "outage: the mirror's JSON error does not name the upstream $ORIGIN: '$msg'"
    fi
}

main() {
    setup
    test_push_to_origin
    test_cold_pull
    test_warm_pull
    test_second_upstream
    test_outage
    echo "mirror metrics at the end:"
    http "http://$MIRROR/metrics" | grep -E '^wharf_mirror' | sed 's/^/  /'
}

main "$@"

# shellcheck shell=bash
# Shared pieces of the end-to-end scripts (docker.sh, skopeo.sh, mirror.sh). Sourced, never
# run: the sourcing script sets `set -euo pipefail` first, sources this file (which only
# defines functions and defaults, with no side effects), then calls `e2e_init NAME`.
#
#   set -euo pipefail
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   e2e_init e2e-NAME
#
# Environment knobs read here:
#   WHARF       wharf binary (default: target/release/wharf if built, else target/debug/wharf)
#   DOCKER_CLI  docker client (default: docker from PATH); used by the Docker section only
#   DOCKERD     docker daemon (default: /usr/sbin/dockerd); used by the Docker section only
#   E2E_KEEP=1  keep the scratch directory $WORK for inspection
#   E2E_WHARF_CONFIG  a config file for the main wharf (start_wharf wharf), e.g. the S3 backend
#
# Sections (what each function needs and provides is in the comment above it):
#   setup and teardown  e2e_init, stop_pid, stop_own_pid, (cleanup: the EXIT trap)
#   reporting           pass, fail, expect_eq, die, run, run_quiet
#   wharf               start_wharf
#   Docker engine       start_dockerd, build_image, busybox_base, image_id, image_layers, push_digest,
#                       pull_digest, check_pulled_content
#   registry and tools  http, digest_header, count_lines, sk, setup_skopeo
#   OCI image layouts   sha256_of, tagged_digest, expect_same_layout

E2E_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -z "${WHARF:-}" ]]; then
    WHARF=$E2E_REPO_ROOT/target/release/wharf
    [[ -x "$WHARF" ]] || WHARF=$E2E_REPO_ROOT/target/debug/wharf
fi
DOCKER_CLI=${DOCKER_CLI:-docker}
DOCKERD=${DOCKERD:-/usr/sbin/dockerd}

# Media types the scripts ask registries for.
# shellcheck disable=SC2034 # used by the sourcing scripts
DOCKER_V2=application/vnd.docker.distribution.manifest.v2+json
# shellcheck disable=SC2034 # used by the sourcing scripts
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json

# ---------------------------------------------------------------------------------------
# Setup and teardown: only processes this script started, by PID
# ---------------------------------------------------------------------------------------

# e2e_init NAME: start the test. Provides NAME (the summary line's prefix), PASSED=0,
# FAILED=0, WORK (a fresh scratch directory wharf-NAME.XXXXXX under $TMPDIR or /tmp),
# MAIN_PID, and the EXIT/INT/TERM traps that run cleanup.
e2e_init() {
    NAME=$1
    PASSED=0
    FAILED=0
    MAIN_PID=$$
    DOCKERD_PID=        # set by start_dockerd
    E2E_PIDS=()         # wharf processes to stop at exit, in start order (start_wharf)
    E2E_WHARF_NAMES=()  # every wharf started, for its log tail on failure (start_wharf)
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/wharf-$NAME.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

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

# stop_own_pid PID: stop a process start_wharf started, before the end of the test, and
# take it off the list cleanup stops (so that a later reuse of its PID is never signalled).
stop_own_pid() {
    local pid=$1 p kept=()
    stop_pid "$pid"
    for p in "${E2E_PIDS[@]}"; do
        [[ "$p" == "$pid" ]] || kept+=("$p")
    done
    E2E_PIDS=("${kept[@]}")
}

# cleanup (the EXIT trap): stop dockerd (and its containerd) and every wharf still on the
# list, newest first; show the wharf logs if anything failed; remove $WORK unless
# E2E_KEEP=1; print "NAME: N passed, M failed" and exit 1 if anything failed.
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
    local i
    for ((i = ${#E2E_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${E2E_PIDS[i]}"
    done
    if ((rc != 0 && FAILED == 0)); then
        FAILED=1 # an unexpected command failure under set -e
    fi
    if ((FAILED > 0)); then
        local n
        for n in "${E2E_WHARF_NAMES[@]}"; do
            if [[ -s "$WORK/$n.log" ]]; then
                echo "---- last lines of $n.log ----" >&2
                tail -n 30 "$WORK/$n.log" >&2
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

# ---------------------------------------------------------------------------------------
# Reporting (needs PASSED and FAILED from e2e_init)
# ---------------------------------------------------------------------------------------

pass() { PASSED=$((PASSED + 1)); echo "ok   - $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL - $1" >&2; }

# expect_eq NAME ACTUAL EXPECTED
expect_eq() {
    if [[ "$2" == "$3" ]]; then pass "$1"; else fail "$1: got '$2', want '$3'"; fi
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

# run_quiet LOG CMD...: run a command with its output saved to LOG, dying on failure.
run_quiet() {
    local log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        die "command failed: $*" "$log"
    fi
}

# run LOG CMD...: like run_quiet, and echo the output.
run() {
    run_quiet "$@"
    cat "$1"
}

# ---------------------------------------------------------------------------------------
# wharf
# ---------------------------------------------------------------------------------------

# start_wharf NAME [ARGS...]: run `wharf serve` on a free loopback port with extra ARGS,
# root $WORK/NAME-root, stdout $WORK/NAME.out and request-level logs in $WORK/NAME.log.
# Needs WHARF, WORK. Provides WHARF_STARTED_PID and WHARF_STARTED_ADDR=127.0.0.1:PORT; the
# process is stopped by cleanup (or earlier by stop_own_pid).
start_wharf() {
    local name=$1 label=wharf
    shift
    [[ "$name" == wharf ]] || label="wharf $name"
    [[ -x "$WHARF" ]] || die "wharf binary not found or not executable: $WHARF (set WHARF=...)"
    : >"$WORK/$name.out"
    E2E_WHARF_NAMES+=("$name")
    # A WHARF_CONFIG from the caller's environment must not change what we test.
    # Request-level debug logs make a failing client's last requests visible in the log,
    # and are what mirror.sh counts the origin's blob GETs from.
    local config=()
    [[ "$name" == wharf && -n "${E2E_WHARF_CONFIG:-}" ]] && config=(--config "$E2E_WHARF_CONFIG")
    env -u WHARF_CONFIG -u WHARF_LISTEN -u WHARF_ROOT -u RUST_LOG NO_COLOR=1 \
        "$WHARF" serve --listen 127.0.0.1:0 --root "$WORK/$name-root" --log info,wharf_registry=debug \
        "${config[@]}" "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.log" &
    WHARF_STARTED_PID=$!
    E2E_PIDS+=("$WHARF_STARTED_PID")
    # wharf prints exactly one line once it is bound; its port is our only way to reach it.
    local i line
    for ((i = 0; i < 100; i++)); do
        line=$(head -n 1 "$WORK/$name.out")
        if [[ "$line" =~ ^wharf\ serve:\ listening\ on\ http://(127\.0\.0\.1:[0-9]+)$ ]]; then
            WHARF_STARTED_ADDR=${BASH_REMATCH[1]}
            echo "$label (pid $WHARF_STARTED_PID) listening on $WHARF_STARTED_ADDR"
            return 0
        fi
        kill -0 "$WHARF_STARTED_PID" 2>/dev/null || die "$label exited before listening" "$WORK/$name.log"
        sleep 0.1
    done
    die "$label did not print its listening line within 10 s" "$WORK/$name.log"
}

# ---------------------------------------------------------------------------------------
# Docker engine (needs DOCKER_CLI, DOCKERD, WORK)
# ---------------------------------------------------------------------------------------

# start_dockerd NAMESPACE [DOCKERD_ARGS...]: a private Docker daemon (data root, exec root,
# socket and pid file under $WORK; containerd namespaces NAMESPACE and NAMESPACE-plugins)
# with extra DOCKERD_ARGS (the registries it may use). No bridge, iptables or forwarding:
# it only builds, pushes and pulls images. Provides DOCKERD_PID (stopped by cleanup) and
# exports DOCKER_HOST and DOCKER_CONFIG so that the client talks to this daemon only.
start_dockerd() {
    local namespace=$1
    shift
    # The client talks to our daemon only, with a private config (no credential helpers).
    export DOCKER_HOST="unix://$WORK/docker.sock" DOCKER_CONFIG="$WORK/docker-config"
    unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
    mkdir -p "$DOCKER_CONFIG"
    [[ -x "$DOCKERD" ]] || die "dockerd not found at $DOCKERD (apt-get install docker.io)"
    command -v "$DOCKER_CLI" >/dev/null || die "docker client not found: $DOCKER_CLI (apt-get install docker.io)"
    # An empty config file, so that /etc/docker/daemon.json cannot conflict with our flags.
    echo '{}' >"$WORK/daemon.json"
    # Private containerd namespaces keep us apart from a system Docker in case dockerd
    # attaches to an already running system containerd instead of starting its own.
    "$DOCKERD" \
        --config-file "$WORK/daemon.json" \
        --data-root "$WORK/data" \
        --exec-root "$WORK/exec" \
        --pidfile "$WORK/dockerd.pid" \
        --host "unix://$WORK/docker.sock" \
        --containerd-namespace "$namespace" \
        --containerd-plugins-namespace "$namespace-plugins" \
        --iptables=false --ip-forward=false --bridge=none \
        "$@" \
        >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        if "$DOCKER_CLI" info >/dev/null 2>&1; then
            echo "dockerd (pid $DOCKERD_PID) ready: $("$DOCKER_CLI" version -f 'server {{.Server.Version}}, client {{.Client.Version}}')"
            return 0
        fi
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            DOCKERD_PID=
            # The kernel log usually says why (missing overlay, cgroup or namespace support).
            echo "---- last lines of the kernel log ----" >&2
            dmesg 2>/dev/null | tail -n 15 >&2 || true
            die "dockerd exited during startup" "$WORK/dockerd.log"
        fi
        sleep 0.1
    done
    die "dockerd not ready within 30 s" "$WORK/dockerd.log"
}

# build_image TAG BASE BIG_MIB: the image under test, built without network and without
# running a container. Base layer from `docker import` (image BASE-base:local, whose
# /etc/motd reads "wharf BASE base" with dashes as spaces and whose os-release ID is
# wharf-BASE), plus three COPY layers of 1 KiB, 256 KiB and BIG_MIB MiB of random data.
# The big random file makes the push need chunked transfer and gives the layer content
# check_pulled_content compares after the round trip. Provides $WORK/ctx/big.bin and
# BIG_MIB.
build_image() {
    local tag=$1 base=$2
    BIG_MIB=$3
    mkdir -p "$WORK/rootfs/etc" "$WORK/ctx"
    echo "wharf ${base//-/ } base" >"$WORK/rootfs/etc/motd"
    echo "ID=wharf-$base" >"$WORK/rootfs/etc/os-release"
    tar -C "$WORK/rootfs" -cf "$WORK/base.tar" .
    run "$WORK/import.log" "$DOCKER_CLI" import "$WORK/base.tar" "$base-base:local"

    head -c 1024 /dev/urandom >"$WORK/ctx/small.bin"
    head -c $((256 * 1024)) /dev/urandom >"$WORK/ctx/medium.bin"
    head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom >"$WORK/ctx/big.bin"
    cat >"$WORK/ctx/Dockerfile" <<EOF
FROM $base-base:local
COPY small.bin /data/small.bin
COPY medium.bin /data/medium.bin
COPY big.bin /data/big.bin
EOF
    # The legacy builder: BuildKit (buildx) is not part of Debian's docker.io and is
    # not needed for COPY-only builds.
    DOCKER_BUILDKIT=0 run "$WORK/build.log" "$DOCKER_CLI" build -t "$tag" "$WORK/ctx"
}

# busybox_base TAG: an image that can RUN things, made here: `docker import` of a rootfs
# holding Debian's static busybox (BUSYBOX, default /bin/busybox) as /bin/sh and every applet.
busybox_base() {
    local tag=$1 bb=${BUSYBOX:-/bin/busybox} applet
    local applets linkage
    applets=$("$bb" --list 2>/dev/null || true)
    linkage=$(LC_ALL=C ldd "$bb" 2>&1 || true)
    [[ $'\n'"$applets"$'\n' == *$'\n'sh$'\n'* && "$linkage" == *"not a dynamic executable"* ]] ||
        die "a static busybox is needed at $bb (apt-get install busybox-static)"
    rm -rf "$WORK/busybox-rootfs"
    mkdir -p "$WORK/busybox-rootfs/bin" "$WORK/busybox-rootfs/etc" "$WORK/busybox-rootfs/tmp"
    cp "$bb" "$WORK/busybox-rootfs/bin/busybox"
    for applet in $applets; do
        [[ "$applet" == busybox ]] || ln -s busybox "$WORK/busybox-rootfs/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$WORK/busybox-rootfs/etc/passwd"
    echo 'root:x:0:' >"$WORK/busybox-rootfs/etc/group"
    tar -C "$WORK/busybox-rootfs" -cf "$WORK/busybox-base.tar" .
    run_quiet "$WORK/busybox-import.log" "$DOCKER_CLI" import --change 'ENV PATH=/bin' "$WORK/busybox-base.tar" "$tag"
}

image_id() { "$DOCKER_CLI" image inspect -f '{{.Id}}' "$1"; }
image_layers() { "$DOCKER_CLI" image inspect -f '{{range .RootFS.Layers}}{{println .}}{{end}}' "$1" | sed '/^$/d'; }

# push_digest LOG: the manifest digest from docker push's last line ("v1: digest: sha256:... size: N").
push_digest() { sed -nE 's/^.*: digest: (sha256:[0-9a-f]{64}) size: [0-9]+$/\1/p' "$1" | tail -n 1; }
# pull_digest LOG: the manifest digest docker pull reports ("Digest: sha256:...").
pull_digest() { sed -nE 's/^Digest: (sha256:[0-9a-f]{64})$/\1/p' "$1"; }

# check_pulled_content IMAGE [LABEL]: the big file in the pulled image is byte-identical to
# the one build_image built from. `docker create` + `docker cp` read the image's filesystem
# without ever starting a container. Needs BIG_MIB from build_image.
check_pulled_content() {
    local cid prefix=${2:+$2: }
    cid=$("$DOCKER_CLI" create --network none "$1" /nonexistent)
    "$DOCKER_CLI" cp "$cid:/data/big.bin" - | tar -xO -f - big.bin >"$WORK/big.pulled"
    "$DOCKER_CLI" rm "$cid" >/dev/null
    if cmp -s "$WORK/big.pulled" "$WORK/ctx/big.bin"; then
        pass "${prefix}$BIG_MIB MiB file in the pulled image is byte-identical"
    else
        fail "${prefix}$BIG_MIB MiB file in the pulled image differs from the original"
    fi
}

# ---------------------------------------------------------------------------------------
# Registry and tools
# ---------------------------------------------------------------------------------------

# http CURL_ARGS...: curl, quiet but for errors. A proxy from the environment must never
# see loopback traffic. Add --fail where an HTTP error must fail the command.
http() { curl --noproxy '*' -sS "$@"; }

# digest_header: filter; the Docker-Content-Digest value from response headers on stdin.
digest_header() { tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" { print $2 }'; }

# count_lines PATTERN FILE: number of lines matching the extended regex (0 if none).
count_lines() { grep -cE "$1" "$2" || true; }

# sk SKOPEO_ARGS...: skopeo isolated from the machine's configuration. No trust policy,
# signature lookaside, registry mirrors or credentials of the host may play a part: the
# policy check is off, registries.d and registries.conf are empty, and every registry
# access is anonymous (--no-creds and friends at the call sites). Needs setup_skopeo.
sk() {
    CONTAINERS_REGISTRIES_CONF="$WORK/registries.conf" \
        skopeo --insecure-policy --registries.d "$WORK/registries.d" --tmpdir "$WORK/sktmp" "$@"
}

# setup_skopeo: check that skopeo is installed and create the empty configuration sk uses.
setup_skopeo() {
    command -v skopeo >/dev/null || die "skopeo not installed (apt-get install skopeo)"
    mkdir -p "$WORK/registries.d" "$WORK/sktmp"
    : >"$WORK/registries.conf"
}

# ---------------------------------------------------------------------------------------
# OCI image layouts
# ---------------------------------------------------------------------------------------

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# tagged_digest LAYOUT TAG: the digest index.json gives TAG.
tagged_digest() {
    jq -r --arg tag "$2" \
        '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $tag) | .digest' \
        "$1/index.json"
}

# expect_same_layout NAME ORIG COPY TAG: TAG names the same digest in both layouts, and
# both hold the same blob files, byte for byte, each stored under its own digest.
expect_same_layout() {
    local name=$1 orig=$2 copy=$3 tag=$4 blob bad=0
    expect_eq "$name: tag $tag has the same digest" "$(tagged_digest "$copy" "$tag")" \
        "$(tagged_digest "$orig" "$tag")"
    expect_eq "$name: same set of blobs" "$(ls "$copy/blobs/sha256")" "$(ls "$orig/blobs/sha256")"
    for blob in "$orig"/blobs/sha256/*; do
        blob=${blob##*/}
        if ! cmp -s "$orig/blobs/sha256/$blob" "$copy/blobs/sha256/$blob"; then
            echo "blob $blob differs or is missing in $copy" >&2
            bad=$((bad + 1))
        elif [[ "$(sha256_of "$copy/blobs/sha256/$blob")" != "$blob" ]]; then
            echo "blob $blob in $copy does not hash to its name" >&2
            bad=$((bad + 1))
        fi
    done
    expect_eq "$name: every blob byte-identical" "$bad" 0
}

#!/usr/bin/env bash
# End-to-end test: a real Docker engine pushes an image to wharf and pulls it back.
#
# The test starts its own wharf and its own dockerd (private data root, exec root, socket
# and pid file), so it neither needs nor touches a system Docker daemon. Nothing is pulled
# from the internet: the base image is `docker import`ed from a tarball of local files and
# the other layers come from COPY steps of the legacy builder, which never runs a
# container and needs no network. All traffic stays on 127.0.0.1.
#
# Usage: WHARF=/path/to/wharf tests/e2e/docker.sh
#   WHARF       wharf binary (default: target/release/wharf if built, else target/debug/wharf)
#   DOCKER_CLI  docker client to use (default: docker from PATH)
#   DOCKERD     docker daemon to start (default: /usr/sbin/dockerd from the docker.io package)
#   E2E_KEEP=1  keep the scratch directory (logs, daemon data) for inspection
set -euo pipefail

NAME=e2e-docker
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -z "${WHARF:-}" ]]; then
    WHARF=$REPO_ROOT/target/release/wharf
    [[ -x "$WHARF" ]] || WHARF=$REPO_ROOT/target/debug/wharf
fi
DOCKER_CLI=${DOCKER_CLI:-docker}
DOCKERD=${DOCKERD:-/usr/sbin/dockerd}

PASSED=0
FAILED=0
WHARF_PID=
DOCKERD_PID=
MAIN_PID=$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/wharf-e2e-docker.XXXXXX")

# ---------------------------------------------------------------------------------------
# Reporting
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
    [[ -n "$WHARF_PID" ]] && stop_pid "$WHARF_PID"
    if ((rc != 0 && FAILED == 0)); then
        FAILED=1 # an unexpected command failure under set -e
    fi
    if ((FAILED > 0)) && [[ -s "$WORK/wharf.log" ]]; then
        echo "---- last lines of wharf.log ----" >&2
        tail -n 30 "$WORK/wharf.log" >&2
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

# start_wharf: run wharf on a free loopback port; sets REGISTRY=127.0.0.1:PORT.
start_wharf() {
    [[ -x "$WHARF" ]] || die "wharf binary not found or not executable: $WHARF (set WHARF=...)"
    : >"$WORK/wharf.out"
    # A WHARF_CONFIG from the caller's environment must not change what we test.
    # Request-level debug logs make a failing client's last requests visible in wharf.log.
    env -u WHARF_CONFIG -u WHARF_LISTEN -u WHARF_ROOT -u RUST_LOG NO_COLOR=1 \
        "$WHARF" serve --listen 127.0.0.1:0 --root "$WORK/wharf-root" --log info,wharf_registry=debug \
        >"$WORK/wharf.out" 2>"$WORK/wharf.log" &
    WHARF_PID=$!
    # wharf prints exactly one line once it is bound; its port is our only way to reach it.
    local i line
    for ((i = 0; i < 100; i++)); do
        line=$(head -n 1 "$WORK/wharf.out")
        if [[ "$line" =~ ^wharf\ serve:\ listening\ on\ http://(127\.0\.0\.1:[0-9]+)$ ]]; then
            REGISTRY=${BASH_REMATCH[1]}
            echo "wharf (pid $WHARF_PID) listening on $REGISTRY"
            return 0
        fi
        kill -0 "$WHARF_PID" 2>/dev/null || die "wharf exited before listening" "$WORK/wharf.log"
        sleep 0.1
    done
    die "wharf did not print its listening line within 10 s" "$WORK/wharf.log"
}

# start_dockerd: a private Docker daemon that knows wharf as an insecure (plain HTTP)
# registry. No bridge, iptables or forwarding: it only builds, pushes and pulls images.
start_dockerd() {
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
        --containerd-namespace wharf-e2e \
        --containerd-plugins-namespace wharf-e2e-plugins \
        --iptables=false --ip-forward=false --bridge=none \
        --insecure-registry "$REGISTRY" \
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

# ---------------------------------------------------------------------------------------
# Registry helpers (plain curl against the Distribution API)
# ---------------------------------------------------------------------------------------

# A proxy from the environment must never see loopback traffic.
http() { curl --noproxy '*' -sS --fail "$@"; }

DOCKER_V2=application/vnd.docker.distribution.manifest.v2+json
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json

# Digest of the tagged manifest, as the registry reports it.
registry_digest() {
    http -I -H "Accept: $DOCKER_V2, $OCI_MANIFEST" "http://$REGISTRY/v2/$1/manifests/$2" |
        tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" { print $2 }'
}

# count_lines PATTERN FILE: number of lines matching the extended regex (0 if none).
count_lines() { grep -cE "$1" "$2" || true; }

# ---------------------------------------------------------------------------------------
# The image under test
# ---------------------------------------------------------------------------------------

# build_image TAG: base layer from `docker import`, plus three COPY layers of 1 KiB,
# 256 KiB and 20 MiB. The random 20 MiB file makes the push big enough to need
# chunked transfer and gives the layer content we can compare after the round trip.
build_image() {
    local tag=$1
    mkdir -p "$WORK/rootfs/etc" "$WORK/ctx"
    echo "wharf e2e base" >"$WORK/rootfs/etc/motd"
    echo "ID=wharf-e2e" >"$WORK/rootfs/etc/os-release"
    tar -C "$WORK/rootfs" -cf "$WORK/base.tar" .
    run "$WORK/import.log" "$DOCKER_CLI" import "$WORK/base.tar" e2e-base:local

    head -c 1024 /dev/urandom >"$WORK/ctx/small.bin"
    head -c $((256 * 1024)) /dev/urandom >"$WORK/ctx/medium.bin"
    head -c $((20 * 1024 * 1024)) /dev/urandom >"$WORK/ctx/big.bin"
    cat >"$WORK/ctx/Dockerfile" <<'EOF'
FROM e2e-base:local
COPY small.bin /data/small.bin
COPY medium.bin /data/medium.bin
COPY big.bin /data/big.bin
EOF
    # The legacy builder: BuildKit (buildx) is not part of Debian's docker.io and is
    # not needed for COPY-only builds.
    DOCKER_BUILDKIT=0 run "$WORK/build.log" "$DOCKER_CLI" build -t "$tag" "$WORK/ctx"
}

image_id() { "$DOCKER_CLI" image inspect -f '{{.Id}}' "$1"; }
image_layers() { "$DOCKER_CLI" image inspect -f '{{range .RootFS.Layers}}{{println .}}{{end}}' "$1" | sed '/^$/d'; }
image_repo_digests() { "$DOCKER_CLI" image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$1" | sed '/^$/d'; }

# push_digest LOG: the manifest digest from docker push's last line ("v1: digest: sha256:... size: N").
push_digest() { sed -nE 's/^.*: digest: (sha256:[0-9a-f]{64}) size: [0-9]+$/\1/p' "$1" | tail -n 1; }

# ---------------------------------------------------------------------------------------
# Test steps
# ---------------------------------------------------------------------------------------

main() {
    start_wharf
    # The client talks to our daemon only, with a private config (no credential helpers).
    export DOCKER_HOST="unix://$WORK/docker.sock" DOCKER_CONFIG="$WORK/docker-config"
    unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
    mkdir -p "$DOCKER_CONFIG"
    start_dockerd

    local app=$REGISTRY/e2e/app:v1 other=$REGISTRY/e2e/other:v1
    build_image "$app"

    local id layers nlayers
    id=$(image_id "$app")
    layers=$(image_layers "$app")
    nlayers=$(wc -l <<<"$layers")
    if ((nlayers >= 3)); then pass "built image has $nlayers layers"; else fail "built image has only $nlayers layers"; fi

    # --- first push: every blob and the manifest are uploaded
    run "$WORK/push1.log" "$DOCKER_CLI" push "$app"
    local digest
    digest=$(push_digest "$WORK/push1.log")
    [[ -n "$digest" ]] || die "no digest in docker push output" "$WORK/push1.log"
    expect_eq "first push uploads every layer" "$(count_lines ': Pushed$' "$WORK/push1.log")" "$nlayers"
    expect_eq "registry resolves e2e/app:v1 to the pushed digest" "$(registry_digest e2e/app v1)" "$digest"
    check_manifest_blobs e2e/app "$digest" "$id" "$nlayers"
    expect_eq "tags/list of e2e/app lists v1" \
        "$(http "http://$REGISTRY/v2/e2e/app/tags/list" | jq -c '.tags')" '["v1"]'

    # --- second push of the same image: the registry already has every layer
    run "$WORK/push2.log" "$DOCKER_CLI" push "$app"
    expect_eq "second push: every layer already exists" \
        "$(count_lines ': Layer already exists$' "$WORK/push2.log")" "$nlayers"
    expect_eq "second push: same manifest digest" "$(push_digest "$WORK/push2.log")" "$digest"

    # --- push under another repository: layers are cross-repository mounted, not re-sent
    run "$WORK/tag.log" "$DOCKER_CLI" tag "$app" "$other"
    run "$WORK/push3.log" "$DOCKER_CLI" push "$other"
    expect_eq "push to e2e/other mounts every layer from e2e/app" \
        "$(count_lines ': Mounted from e2e/app$' "$WORK/push3.log")" "$nlayers"
    expect_eq "push to e2e/other: same manifest digest" "$(push_digest "$WORK/push3.log")" "$digest"
    expect_eq "tags/list of e2e/other lists v1" \
        "$(http "http://$REGISTRY/v2/e2e/other/tags/list" | jq -c '.tags')" '["v1"]'

    # --- forget everything locally, so that the pull must fetch every byte from wharf
    run "$WORK/rmi.log" "$DOCKER_CLI" rmi "$app" "$other" e2e-base:local
    expect_eq "no image left in the daemon before the pull" "$("$DOCKER_CLI" images -aq | wc -l)" 0

    run "$WORK/pull.log" "$DOCKER_CLI" pull "$app"
    expect_eq "pull reports the pushed digest" \
        "$(sed -nE 's/^Digest: (sha256:[0-9a-f]{64})$/\1/p' "$WORK/pull.log")" "$digest"
    expect_eq "pulled image ID equals the pushed one" "$(image_id "$app")" "$id"
    expect_eq "pulled layers (diff IDs) equal the pushed ones" "$(image_layers "$app")" "$layers"
    expect_eq "pulled RepoDigests name the pushed manifest" \
        "$(image_repo_digests "$app")" "$REGISTRY/e2e/app@$digest"
    check_pulled_content "$app"
}

# check_manifest_blobs REPO DIGEST IMAGE_ID NLAYERS: the stored manifest hashes to its
# digest, its config is the image (a Docker image ID is its config digest), and every
# blob it lists can be downloaded with the right size and digest.
check_manifest_blobs() {
    local repo=$1 digest=$2 id=$3 nlayers=$4 manifest="$WORK/manifest.json"
    http -H "Accept: $DOCKER_V2, $OCI_MANIFEST" -o "$manifest" "http://$REGISTRY/v2/$repo/manifests/$digest"
    expect_eq "manifest bytes hash to their digest" "sha256:$(sha256sum <"$manifest" | cut -d' ' -f1)" "$digest"
    expect_eq "manifest config is the image" "$(jq -r .config.digest "$manifest")" "$id"
    expect_eq "manifest lists every layer" "$(jq '.layers | length' "$manifest")" "$nlayers"

    local bad=0 blob_digest size got
    while read -r blob_digest size; do
        http -o "$WORK/blob" "http://$REGISTRY/v2/$repo/blobs/$blob_digest"
        got="sha256:$(sha256sum <"$WORK/blob" | cut -d' ' -f1) $(stat -c %s "$WORK/blob")"
        if [[ "$got" != "$blob_digest $size" ]]; then
            echo "blob $blob_digest: got $got, want size $size" >&2
            bad=$((bad + 1))
        fi
    done < <(jq -r '.config, .layers[] | "\(.digest) \(.size)"' "$manifest")
    expect_eq "every blob downloads with its digest and size" "$bad" 0
}

# check_pulled_content IMAGE: the 20 MiB file in the pulled image is byte-identical to
# the one we built from. `docker create` + `docker cp` read the image's filesystem
# without ever starting a container.
check_pulled_content() {
    local cid
    cid=$("$DOCKER_CLI" create --network none "$1" /nonexistent)
    "$DOCKER_CLI" cp "$cid:/data/big.bin" - | tar -xO -f - big.bin >"$WORK/big.pulled"
    "$DOCKER_CLI" rm "$cid" >/dev/null
    if cmp -s "$WORK/big.pulled" "$WORK/ctx/big.bin"; then
        pass "20 MiB file in the pulled image is byte-identical"
    else
        fail "20 MiB file in the pulled image differs from the original"
    fi
}

main "$@"

#!/usr/bin/env bash
# End-to-end test of the smart client (`wharf push | pull | copy`) with real parts: a private
# Docker engine, wharf's registry and Debian's docker-registry (CNCF distribution 2.8),
# umoci and skopeo.
#
# For each registry: push an image straight out of the Docker engine (docker-daemon:, layers
# compressed on the way, gzip and zstd), pull it back into the engine under a new name and
# check the image ID is the original's (same config, so same image), pull it to rootfs: and
# compare it file by file (type, mode, owner, size, link target, content) with what umoci
# unpacks from the same image, and round-trip it through docker-archive: files that
# `docker load` accepts. Nothing runs a container; nothing is fetched from the internet.
#
# Usage: WHARF=/path/to/wharf tests/e2e/client.sh
#   E2E_KEEP=1  keep the scratch directory for inspection
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init e2e-client

command -v umoci >/dev/null || die "umoci not installed (apt-get install umoci)"
command -v docker-registry >/dev/null || die "docker-registry not installed (apt-get install docker-registry)"
setup_skopeo

# free_port: a TCP port nobody listens on right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_distribution: Debian's docker-registry on a free loopback port; sets DIST_ADDR.
start_distribution() {
    local port i
    port=$(free_port)
    cat >"$WORK/distribution.yml" <<EOF
version: 0.1
log: { level: warn }
storage:
  filesystem: { rootdirectory: $WORK/distribution-root }
  delete: { enabled: true }
http: { addr: 127.0.0.1:$port }
EOF
    docker-registry serve "$WORK/distribution.yml" >"$WORK/distribution.log" 2>&1 &
    E2E_PIDS+=("$!")
    for ((i = 0; i < 100; i++)); do
        if http -o /dev/null "http://127.0.0.1:$port/v2/"; then
            DIST_ADDR=127.0.0.1:$port
            echo "docker-registry (pid $!) listening on $DIST_ADDR"
            return 0
        fi
        sleep 0.1
    done
    die "docker-registry did not start" "$WORK/distribution.log"
}

# w ARGS...: wharf with a private content store, quiet on success.
w() { WHARF_STORE="$WORK/store" "$WHARF" "$@" --quiet; }

# tree_listing DIR: one line per entry below DIR: type, mode, owner, size (files), link
# target, path, and a content hash for regular files.
tree_listing() {
    (cd "$1" && find . -mindepth 1 -printf '%y %m %U:%G %s %l %p\n' | sort -k6) |
        awk '{ if ($1 == "d" || $1 == "l") $4 = "-"; print }'
    (cd "$1" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum)
}

# expect_same_tree NAME A B
expect_same_tree() {
    tree_listing "$2" >"$WORK/tree.a"
    tree_listing "$3" >"$WORK/tree.b"
    if diff -u "$WORK/tree.a" "$WORK/tree.b" >"$WORK/tree.diff"; then
        pass "$1 ($(wc -l <"$WORK/tree.a") lines of listing)"
    else
        head -n 30 "$WORK/tree.diff" >&2
        fail "$1"
    fi
}

start_dockerd wharf-e2e-client
start_wharf wharf
WHARF_ADDR=$WHARF_STARTED_ADDR
start_distribution

# The image: a base with a symlink, a hard link, a setuid file and files of another owner
# (docker import keeps them), then COPY layers of random data (build_image).
mkdir -p "$WORK/rootfs/usr/bin" "$WORK/rootfs/home/user"
echo '#!/bin/sh' >"$WORK/rootfs/usr/bin/tool"
chmod 4755 "$WORK/rootfs/usr/bin/tool"
ln "$WORK/rootfs/usr/bin/tool" "$WORK/rootfs/usr/bin/tool-hardlink"
ln -s tool "$WORK/rootfs/usr/bin/tool-link"
ln -s /etc/motd "$WORK/rootfs/home/user/motd"
echo "user file" >"$WORK/rootfs/home/user/notes"
chown -R 1000:1000 "$WORK/rootfs/home/user"
build_image e2e/app:v1 client-e2e 8
ORIG_ID=$(image_id e2e/app:v1)

for reg in wharf distribution; do
    if [[ $reg == wharf ]]; then addr=$WHARF_ADDR; else addr=$DIST_ADDR; fi
    repo=$addr/e2e/app

    # Push straight out of the engine: layers compressed on the way. Read from the engine's layer
    # store (the default here: root, overlay2) and through its export (docker save): the same
    # bytes, so the same manifest digest.
    w push docker-daemon:e2e/app:v1 "$repo:gzip"
    WHARF_DOCKER_STORE=0 w push docker-daemon:e2e/app:v1 "$repo:exported"
    expect_eq "$reg: engine store and engine export give the same manifest" \
        "$(http -I -H "Accept: $OCI_MANIFEST" "http://$addr/v2/e2e/app/manifests/exported" | digest_header)" \
        "$(http -I -H "Accept: $OCI_MANIFEST" "http://$addr/v2/e2e/app/manifests/gzip" | digest_header)"
    w push --compression zstd docker-daemon:e2e/app:v1 "$repo:zstd"
    mt=$(http -H "Accept: $OCI_MANIFEST" "http://$addr/v2/e2e/app/manifests/zstd" |
        jq -r '[.layers[].mediaType] | unique | join(",")')
    expect_eq "$reg: zstd push has zstd layers" "$mt" "application/vnd.oci.image.layer.v1.tar+zstd"
    mt=$(http -H "Accept: $OCI_MANIFEST" "http://$addr/v2/e2e/app/manifests/gzip" |
        jq -r '[.layers[].mediaType] | unique | join(",")')
    expect_eq "$reg: gzip push has gzip layers" "$mt" "application/vnd.oci.image.layer.v1.tar+gzip"

    # Into the engine under a new name: the same image ID means the same config and layers.
    for tag in gzip zstd; do
        w pull "$repo:$tag" "docker-daemon:e2e/back-$reg:$tag"
        expect_eq "$reg: pulled $tag image has the original ID" "$(image_id "e2e/back-$reg:$tag")" "$ORIG_ID"
    done
    check_pulled_content "e2e/back-$reg:gzip" "$reg"

    # rootfs: against umoci, from the same image.
    w copy "$repo:gzip" "oci:$WORK/layout-$reg:v1"
    umoci unpack --image "$WORK/layout-$reg:v1" "$WORK/bundle-$reg" >/dev/null
    w pull "$repo:gzip" "rootfs:$WORK/rootfs-$reg"
    expect_same_tree "$reg: rootfs equals umoci unpack" "$WORK/bundle-$reg/rootfs" "$WORK/rootfs-$reg"
    w pull "$repo:zstd" "rootfs:$WORK/rootfs-$reg-zstd"
    expect_same_tree "$reg: zstd rootfs equals umoci unpack" "$WORK/bundle-$reg/rootfs" "$WORK/rootfs-$reg-zstd"

    # The skopeo view of what wharf pushed.
    sk inspect --tls-verify=false --no-creds "docker://$repo:gzip" >"$WORK/inspect.json"
    expect_eq "$reg: skopeo sees 4 layers" "$(jq '.Layers | length' "$WORK/inspect.json")" 4
done

# docker-archive both ways: docker save → wharf → registry → wharf → docker load.
"$DOCKER_CLI" save -o "$WORK/saved.tar" e2e/app:v1
w copy "docker-archive:$WORK/saved.tar" "$WHARF_ADDR/e2e/archived:v1"
w pull "$WHARF_ADDR/e2e/archived:v1" "docker-archive:$WORK/out.tar:e2e/loaded:v1"
"$DOCKER_CLI" load -i "$WORK/out.tar" >/dev/null
expect_eq "docker-archive round trip keeps the image ID" "$(image_id e2e/loaded:v1)" "$ORIG_ID"
w copy "docker-archive:$WORK/saved.tar:e2e/app:v1" "rootfs:$WORK/rootfs-archive"
expect_same_tree "docker-archive to rootfs equals umoci unpack" "$WORK/bundle-wharf/rootfs" "$WORK/rootfs-archive"

# Direct pairs without a registry in between: engine → layout → engine, engine → archive → engine,
# archive → layout → archive, layout → rootfs.
w copy docker-daemon:e2e/app:v1 "oci:$WORK/direct-layout:v1"
w copy "oci:$WORK/direct-layout:v1" docker-daemon:e2e/from-layout:v1
expect_eq "engine → OCI layout → engine keeps the image ID" "$(image_id e2e/from-layout:v1)" "$ORIG_ID"
w copy docker-daemon:e2e/app:v1 "docker-archive:$WORK/direct.tar:e2e/direct:v1"
"$DOCKER_CLI" rmi -f e2e/direct:v1 >/dev/null 2>&1 || true
w copy "docker-archive:$WORK/direct.tar" docker-daemon:e2e/direct:v1
expect_eq "engine → docker archive → engine keeps the image ID" "$(image_id e2e/direct:v1)" "$ORIG_ID"
w copy "docker-archive:$WORK/saved.tar" "oci:$WORK/archive-layout:v1"
w copy "oci:$WORK/archive-layout:v1" "docker-archive:$WORK/relayed.tar:e2e/relayed:v1"
"$DOCKER_CLI" load -i "$WORK/relayed.tar" >/dev/null
expect_eq "docker archive → OCI layout → docker archive keeps the image ID" "$(image_id e2e/relayed:v1)" "$ORIG_ID"
w copy "oci:$WORK/direct-layout:v1" "rootfs:$WORK/rootfs-layout"
expect_same_tree "OCI layout to rootfs equals umoci unpack" "$WORK/bundle-wharf/rootfs" "$WORK/rootfs-layout"
umoci unpack --image "$WORK/direct-layout:v1" "$WORK/bundle-direct" >/dev/null
expect_same_tree "umoci unpacks wharf's compressed layout like the registry copy" \
    "$WORK/bundle-wharf/rootfs" "$WORK/bundle-direct/rootfs"

# A second pull of the same image into the engine downloads nothing: the content store has it.
"$DOCKER_CLI" rmi -f e2e/back-wharf:gzip >/dev/null
WHARF_STORE="$WORK/store" "$WHARF" pull --json "$WHARF_ADDR/e2e/app:gzip" docker-daemon:e2e/again:v1 >"$WORK/again.json"
expect_eq "second pull skips every blob" "$(jq '.blobs_copied' "$WORK/again.json")" 0
expect_eq "second pull loads the same image" "$(image_id e2e/again:v1)" "$ORIG_ID"

# Errors are one clear line.
if out=$("$WHARF" pull "$WHARF_ADDR/e2e/absent:v1" "rootfs:$WORK/never" 2>&1); then
    fail "pulling a missing image succeeded"
else
    expect_eq "missing image: one line naming the manifest" "$(grep -c 'manifest' <<<"$out")" 1
fi
if out=$(DOCKER_HOST=unix://$WORK/nothing.sock "$WHARF" push docker-daemon:e2e/app:v1 "$WHARF_ADDR/e2e/x:v1" 2>&1); then
    fail "a push from an unreachable engine succeeded"
else
    expect_eq "unreachable engine is named" "$(grep -c 'cannot reach the Docker engine' <<<"$out")" 1
fi

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

# The shared helpers (lib.sh says what each needs and provides). `shellcheck -x` follows it.
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init e2e-docker

# ---------------------------------------------------------------------------------------
# Registry helpers (plain curl against the Distribution API; see also lib.sh)
# ---------------------------------------------------------------------------------------

# Digest of the tagged manifest, as the registry reports it.
registry_digest() {
    http --fail -I -H "Accept: $DOCKER_V2, $OCI_MANIFEST" "http://$REGISTRY/v2/$1/manifests/$2" | digest_header
}

# The image under test is built by lib.sh's build_image (base layer plus three COPY layers,
# the biggest 20 MiB); image_id and image_layers are there too.
image_repo_digests() { "$DOCKER_CLI" image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$1" | sed '/^$/d'; }

# ---------------------------------------------------------------------------------------
# Test steps
# ---------------------------------------------------------------------------------------

main() {
    start_wharf wharf
    REGISTRY=$WHARF_STARTED_ADDR
    # wharf is known to dockerd as an insecure (plain HTTP) registry.
    start_dockerd wharf-e2e --insecure-registry "$REGISTRY"

    local app=$REGISTRY/e2e/app:v1 other=$REGISTRY/e2e/other:v1
    build_image "$app" e2e 20

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
        "$(http --fail "http://$REGISTRY/v2/e2e/app/tags/list" | jq -c '.tags')" '["v1"]'

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
        "$(http --fail "http://$REGISTRY/v2/e2e/other/tags/list" | jq -c '.tags')" '["v1"]'

    # --- forget everything locally, so that the pull must fetch every byte from wharf
    run "$WORK/rmi.log" "$DOCKER_CLI" rmi "$app" "$other" e2e-base:local
    expect_eq "no image left in the daemon before the pull" "$("$DOCKER_CLI" images -aq | wc -l)" 0

    run "$WORK/pull.log" "$DOCKER_CLI" pull "$app"
    expect_eq "pull reports the pushed digest" \
        "$(pull_digest "$WORK/pull.log")" "$digest"
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
    http --fail -H "Accept: $DOCKER_V2, $OCI_MANIFEST" -o "$manifest" "http://$REGISTRY/v2/$repo/manifests/$digest"
    expect_eq "manifest bytes hash to their digest" "sha256:$(sha256sum <"$manifest" | cut -d' ' -f1)" "$digest"
    expect_eq "manifest config is the image" "$(jq -r .config.digest "$manifest")" "$id"
    expect_eq "manifest lists every layer" "$(jq '.layers | length' "$manifest")" "$nlayers"

    local bad=0 blob_digest size got
    while read -r blob_digest size; do
        http --fail -o "$WORK/blob" "http://$REGISTRY/v2/$repo/blobs/$blob_digest"
        got="sha256:$(sha256sum <"$WORK/blob" | cut -d' ' -f1) $(stat -c %s "$WORK/blob")"
        if [[ "$got" != "$blob_digest $size" ]]; then
            echo "blob $blob_digest: got $got, want size $size" >&2
            bad=$((bad + 1))
        fi
    done < <(jq -r '.config, .layers[] | "\(.digest) \(.size)"' "$manifest")
    expect_eq "every blob downloads with its digest and size" "$bad" 0
}

main "$@"

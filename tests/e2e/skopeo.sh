#!/usr/bin/env bash
# End-to-end test: skopeo copies hand-made OCI image layouts into wharf and back.
#
# The OCI layouts are written here from scratch (tar + gzip + sha256sum + jq), so the
# test knows every byte the registry is given and can demand that exactly those bytes
# come back: same manifest digest, same blobs, for a single image and for a multi-arch
# index. It also checks `skopeo inspect` and `skopeo delete`. Everything runs against a
# private wharf on 127.0.0.1; nothing is fetched from anywhere else.
#
# Usage: WHARF=/path/to/wharf tests/e2e/skopeo.sh
#   WHARF       wharf binary (default: target/release/wharf if built, else target/debug/wharf)
#   E2E_KEEP=1  keep the scratch directory (layouts, logs) for inspection
set -euo pipefail

# The shared helpers (lib.sh says what each needs and provides). `shellcheck -x` follows it.
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init e2e-skopeo

OCI_INDEX=application/vnd.oci.image.index.v1+json
OCI_CONFIG=application/vnd.oci.image.config.v1+json
OCI_LAYER_GZIP=application/vnd.oci.image.layer.v1.tar+gzip

# expect_same_file NAME FILE_A FILE_B
expect_same_file() {
    if cmp -s "$2" "$3"; then pass "$1"; else fail "$1: $2 and $3 differ"; fi
}

# ---------------------------------------------------------------------------------------
# skopeo (sk and setup_skopeo, in lib.sh, isolate it from the machine's configuration)
# ---------------------------------------------------------------------------------------

# sk_copy SRC DST [ARGS...]: plain HTTP both ways, and fail rather than alter a digest.
sk_copy() {
    local src=$1 dst=$2
    shift 2
    sk copy --src-tls-verify=false --dest-tls-verify=false --src-no-creds --dest-no-creds \
        --preserve-digests "$@" "$src" "$dst"
}

# ---------------------------------------------------------------------------------------
# Writing OCI image layouts by hand
# ---------------------------------------------------------------------------------------

# new_layout DIR: an empty OCI image layout.
new_layout() {
    mkdir -p "$1/blobs/sha256"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$1/oci-layout"
}

# add_blob LAYOUT MEDIA_TYPE FILE: store FILE under its digest; sets DESC to its descriptor.
add_blob() {
    local layout=$1 media_type=$2 file=$3 hex size
    hex=$(sha256_of "$file")
    size=$(stat -c %s "$file")
    mv "$file" "$layout/blobs/sha256/$hex"
    DESC=$(jq -cn --arg m "$media_type" --arg d "sha256:$hex" --argjson s "$size" \
        '{mediaType: $m, digest: $d, size: $s}')
}

# add_layer LAYOUT SRC_DIR: a gzip layer of SRC_DIR's files; sets DESC and DIFF_ID (the
# digest of the uncompressed tar, which the image config must list). The tar and gzip
# flags make the bytes depend on file contents only, not on owners or timestamps.
add_layer() {
    local layout=$1 src=$2 tmp="$WORK/layer.tar"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$src" -cf "$tmp" .
    DIFF_ID="sha256:$(sha256_of "$tmp")"
    gzip -n -c "$tmp" >"$tmp.gz"
    rm "$tmp"
    add_blob "$layout" "$OCI_LAYER_GZIP" "$tmp.gz"
}

# add_image LAYOUT ARCH SRC_DIR...: one layer per SRC_DIR, a config and a manifest; sets
# DESC to the manifest's descriptor.
add_image() {
    local layout=$1 arch=$2 src layers='[]' diff_ids='[]' config
    shift 2
    for src in "$@"; do
        add_layer "$layout" "$src"
        layers=$(jq -c --argjson d "$DESC" '. + [$d]' <<<"$layers")
        diff_ids=$(jq -c --arg d "$DIFF_ID" '. + [$d]' <<<"$diff_ids")
    done
    jq -cn --arg arch "$arch" --argjson diff_ids "$diff_ids" '{
        architecture: $arch, os: "linux",
        config: {Env: ["PATH=/bin"], Cmd: ["/bin/true"]},
        rootfs: {type: "layers", diff_ids: $diff_ids}
    }' >"$WORK/config.json"
    add_blob "$layout" "$OCI_CONFIG" "$WORK/config.json"
    config=$DESC
    jq -cn --arg mt "$OCI_MANIFEST" --argjson config "$config" --argjson layers "$layers" \
        '{schemaVersion: 2, mediaType: $mt, config: $config, layers: $layers}' >"$WORK/manifest.json"
    add_blob "$layout" "$OCI_MANIFEST" "$WORK/manifest.json"
}

# tag_in_index LAYOUT TAG: write index.json naming DESC (a manifest or an index) as TAG.
tag_in_index() {
    jq -n --arg mt "$OCI_INDEX" --argjson d "$DESC" --arg tag "$2" '{
        schemaVersion: 2, mediaType: $mt,
        manifests: [$d + {annotations: {"org.opencontainers.image.ref.name": $tag}}]
    }' >"$1/index.json"
}

# blob_path LAYOUT DIGEST
blob_path() { echo "$1/blobs/sha256/${2#sha256:}"; }

# random_dir DIR SIZE: a directory with one random file of SIZE bytes and a text file.
random_dir() {
    mkdir -p "$1/data"
    head -c "$2" /dev/urandom >"$1/data/payload.bin"
    echo "payload of $2 bytes" >"$1/data/README"
}

# ---------------------------------------------------------------------------------------
# Checks (expect_same_layout, sha256_of and tagged_digest are in lib.sh)
# ---------------------------------------------------------------------------------------

# get_manifest REPO REF OUT: GET a manifest (any of the OCI types); prints the HTTP status.
get_manifest() {
    http -o "$3" -w '%{http_code}' -H "Accept: $OCI_MANIFEST, $OCI_INDEX" \
        "http://$REGISTRY/v2/$1/manifests/$2"
}

# content_digest REPO REF: the Docker-Content-Digest header of a manifest HEAD.
content_digest() {
    http -I -H "Accept: $OCI_MANIFEST, $OCI_INDEX" "http://$REGISTRY/v2/$1/manifests/$2" | digest_header
}

# ---------------------------------------------------------------------------------------
# Test steps
# ---------------------------------------------------------------------------------------

# A single-platform image with two layers: push, inspect, pull back, compare.
test_single_image() {
    local src="$WORK/single" back="$WORK/single-back" repo=e2e/skopeo manifest
    new_layout "$src"
    random_dir "$WORK/files-a" 4096
    random_dir "$WORK/files-b" $((1024 * 1024))
    add_image "$src" amd64 "$WORK/files-a" "$WORK/files-b"
    tag_in_index "$src" v1
    manifest=$(tagged_digest "$src" v1)

    run_quiet "$WORK/push-single.log" sk_copy "oci:$src:v1" "docker://$REGISTRY/$repo:v1"
    expect_eq "single: registry resolves the tag to the layout's manifest digest" \
        "$(content_digest "$repo" v1)" "$manifest"

    # skopeo inspect reads manifest, config and tag list through the registry API.
    sk inspect --tls-verify=false --no-creds "docker://$REGISTRY/$repo:v1" >"$WORK/inspect.json"
    expect_eq "inspect: digest" "$(jq -r .Digest "$WORK/inspect.json")" "$manifest"
    expect_eq "inspect: layers" "$(jq -c .Layers "$WORK/inspect.json")" \
        "$(jq -c '[.layers[].digest]' "$(blob_path "$src" "$manifest")")"
    expect_eq "inspect: platform" "$(jq -r '.Os + "/" + .Architecture' "$WORK/inspect.json")" linux/amd64
    expect_eq "inspect: tags" "$(jq -c .RepoTags "$WORK/inspect.json")" '["v1"]'
    sk inspect --tls-verify=false --no-creds --raw "docker://$REGISTRY/$repo:v1" >"$WORK/raw-manifest"
    expect_same_file "inspect --raw: manifest bytes unchanged" "$WORK/raw-manifest" "$(blob_path "$src" "$manifest")"

    run_quiet "$WORK/pull-single.log" sk_copy "docker://$REGISTRY/$repo:v1" "oci:$back:v1"
    expect_same_layout single "$src" "$back" v1

    SINGLE_MANIFEST=$manifest
}

# A multi-arch index (amd64 and arm64, each with its own layer): copy --all both ways.
test_multi_arch() {
    local src="$WORK/multi" back="$WORK/multi-back" repo=e2e/multi entries='[]' arch index
    new_layout "$src"
    for arch in amd64 arm64; do
        random_dir "$WORK/files-$arch" $((64 * 1024))
        add_image "$src" "$arch" "$WORK/files-$arch"
        entries=$(jq -c --argjson d "$DESC" --arg arch "$arch" \
            '. + [$d + {platform: {architecture: $arch, os: "linux"}}]' <<<"$entries")
    done
    jq -cn --arg mt "$OCI_INDEX" --argjson m "$entries" \
        '{schemaVersion: 2, mediaType: $mt, manifests: $m}' >"$WORK/index.json"
    add_blob "$src" "$OCI_INDEX" "$WORK/index.json"
    tag_in_index "$src" v1
    index=$(tagged_digest "$src" v1)

    run_quiet "$WORK/push-multi.log" sk_copy "oci:$src:v1" "docker://$REGISTRY/$repo:v1" --all
    expect_eq "multi: registry resolves the tag to the index digest" "$(content_digest "$repo" v1)" "$index"
    local status
    status=$(get_manifest "$repo" v1 "$WORK/got-index")
    expect_eq "multi: GET index by tag is 200" "$status" 200
    expect_same_file "multi: index bytes unchanged" "$WORK/got-index" "$(blob_path "$src" "$index")"
    local child bad=0
    for child in $(jq -r '.manifests[].digest' "$WORK/got-index"); do
        status=$(get_manifest "$repo" "$child" "$WORK/got-child")
        if [[ "$status" != 200 ]] || ! cmp -s "$WORK/got-child" "$(blob_path "$src" "$child")"; then
            echo "platform manifest $child: HTTP $status or different bytes" >&2
            bad=$((bad + 1))
        fi
    done
    expect_eq "multi: both platform manifests served by digest, unchanged" "$bad" 0

    run_quiet "$WORK/pull-multi.log" sk_copy "docker://$REGISTRY/$repo:v1" "oci:$back:v1" --all
    expect_same_layout multi "$src" "$back" v1
}

# skopeo delete by digest removes the manifest; the registry then answers 404 with the
# spec's error body, by digest and by the tag that named it.
test_delete() {
    local repo=e2e/skopeo status
    run_quiet "$WORK/delete.log" sk delete --tls-verify=false --no-creds "docker://$REGISTRY/$repo@$SINGLE_MANIFEST"
    status=$(get_manifest "$repo" "$SINGLE_MANIFEST" "$WORK/deleted.json")
    expect_eq "delete: GET manifest by digest is 404" "$status" 404
    expect_eq "delete: error code is MANIFEST_UNKNOWN" \
        "$(jq -r '.errors[0].code' "$WORK/deleted.json" 2>/dev/null || echo "not JSON: $(head -c 200 "$WORK/deleted.json")")" \
        MANIFEST_UNKNOWN
    # Like the reference registry, wharf drops the tags that pointed at the manifest.
    status=$(get_manifest "$repo" v1 "$WORK/deleted-tag.json")
    expect_eq "delete: GET manifest by its former tag is 404" "$status" 404
    expect_eq "delete: tags/list no longer lists v1" \
        "$(http "http://$REGISTRY/v2/$repo/tags/list" | jq -c '[.tags[]? | select(. == "v1")]')" '[]'
}

main() {
    setup_skopeo
    start_wharf wharf
    REGISTRY=$WHARF_STARTED_ADDR
    echo "$(skopeo --version), registry $REGISTRY"
    test_single_image
    test_multi_arch
    test_delete
}

main "$@"

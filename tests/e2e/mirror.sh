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

# The shared helpers (lib.sh says what each needs and provides). `shellcheck -x` follows it.
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init e2e-mirror
ORIGIN_PID=

# The image, as Docker Hub would name it, and the repository the mirror asks upstream for.
HUB_IMAGE=e2emirror:v1
UPSTREAM_REPO=library/e2emirror

# expect_ge NAME ACTUAL MIN (integers)
expect_ge() {
    if [[ "$2" =~ ^[0-9]+$ ]] && (($2 >= $3)); then pass "$1"; else fail "$1: got '$2', want >= $3"; fi
}

# ---------------------------------------------------------------------------------------
# Registry helpers (http and the rest are in lib.sh)
# ---------------------------------------------------------------------------------------

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
# The image under test (lib.sh's build_image, as in docker.sh: no network, no container run)
# ---------------------------------------------------------------------------------------

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

# ---------------------------------------------------------------------------------------
# Test steps
# ---------------------------------------------------------------------------------------

setup() {
    setup_skopeo
    command -v jq >/dev/null || die "jq not installed (apt-get install jq)"

    start_wharf origin
    ORIGIN_PID=$WHARF_STARTED_PID ORIGIN=$WHARF_STARTED_ADDR
    # A 1 s tag TTL, so that the outage pull really has to revalidate the tag against the
    # (then dead) origin and fall back to the cached manifest, instead of answering from
    # a still fresh tag without asking.
    printf '[mirror]\ntag_ttl_secs = 1\n' >"$WORK/mirror.toml"
    start_wharf mirror --config "$WORK/mirror.toml" \
        --upstream "http://$ORIGIN" --upstream "second=http://$ORIGIN"
    MIRROR=$WHARF_STARTED_ADDR

    # dockerd's Docker Hub mirror is our wharf mirror; both wharf ports are insecure
    # (plain HTTP) registries to it.
    start_dockerd wharf-e2e-mirror \
        --registry-mirror "http://$MIRROR" \
        --insecure-registry "$ORIGIN" \
        --insecure-registry "$MIRROR"
    echo "dockerd registry mirrors: $("$DOCKER_CLI" info -f '{{.RegistryConfig.Mirrors}}')"
}

# Build, push to the origin, and record what the pulls must give back.
test_push_to_origin() {
    local pushed=$ORIGIN/$UPSTREAM_REPO:v1
    build_image "$pushed" e2e-mirror 8 >/dev/null
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
    local oci_manifest bad=0
    oci_manifest="$layout/blobs/sha256/$(jq -r '.manifests[0].digest' "$layout/index.json" | cut -d: -f2)"
    expect_eq "second upstream: oci layout has the origin's layer digests" \
        "$(jq -r '.layers[].digest' "$oci_manifest")" "$LAYER_DIGESTS"
    # Same manifest digest for v1, same blob set, every blob byte-identical and stored
    # under its own digest.
    expect_same_layout "second upstream: oci layout vs a copy made from the origin" \
        "$WORK/layout-origin" "$layout" v1

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
    stop_own_pid "$ORIGIN_PID"
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

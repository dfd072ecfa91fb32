#!/usr/bin/env bash
# End-to-end test of P2P distribution on a real (emulated) network: an origin `wharf serve`,
# a `wharf scheduler` and 8 `wharf node`s, each in its own network namespace, joined by a
# bridge with every link shaped to 100 Mbit/s (tests/e2e/p2p-net.sh builds it; addresses
# from 198.18.0.0/15 only, nothing is routed anywhere else), plus a ninth node with a real
# Docker engine in its namespace.
#
# What it shows:
#   1. the 8 nodes pull every blob of a 4-layer, ~24 MiB image at once, with curl against
#      their own mirror endpoint: every blob arrives byte-identical (sha256 = digest) on
#      every node, and the origin sent about one copy: the nodes' counters of bytes fetched
#      from the origin, wharf_p2p_bytes_total{source="origin"}, add up to 1.00x-1.05x of
#      the image, and the origin's network interface sent at most 1.10x (that counts failed
#      fetches too, and TCP/IP headers);
#   2. the nodes started with --peer-send-buffer 24K (odd ones; so P2P_NODE_ARGS must not
#      carry that flag) serve peers on connections whose send buffer is 48K (the kernel
#      doubles it): `ss -tm` in their namespace;
#   3. each node advertised its namespace's 198.18 address (found from the route to the
#      scheduler, no --advertise-addr given), never 127.0.0.1: in its own startup line and
#      in the scheduler's GET /v1/swarms (which refuses a request without the token);
#   4. Docker (a private dockerd in the ninth node's namespace, --registry-mirror = that
#      node) pulls `p2pimg:v1` (docker.io/library/p2pimg -> mirror -> node -> peers): the
#      pushed manifest digest, image ID and file contents, every blob from the peers and
#      none from the origin; after `docker rmi`, a second pull is served from the node's
#      own cache (no byte from peers or origin, no blob request at the origin);
#   5. a peer killed mid-transfer (the first node to serve a piece of a second image, SIGKILL,
#      links at 20 Mbit/s): the other nodes finish byte-identical, the origin sending under 2x;
#   6. containerd (Docker's, via `ctr`) with a hosts.toml naming node dk as the mirror of the
#      origin's registry host pulls the second image: dk picks the upstream by ?ns=, the
#      blobs come from the peers.
#
# Needs root (ip netns, tc), iproute2, curl, jq, openssl, and docker.io for step 3. Takes
# ~1 minute. Nothing comes from the internet; only processes and namespaces this script
# made are stopped and deleted.
#
# Usage: WHARF=/path/to/wharf tests/e2e/p2p.sh
#   WHARF         wharf binary (default: target/release/wharf if built, else target/debug/wharf)
#   P2P_NODES     nodes in the swarm (default 8)
#   P2P_RATE_MBIT link rate of every host, Mbit/s (default 100)
#   DOCKER_CLI, DOCKERD  as in lib.sh
#   E2E_KEEP=1    keep the scratch directory (logs of every process, pulled blobs)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=p2p-net.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/p2p-net.sh"
e2e_init p2p

NODES=${P2P_NODES:-8}
RATE=${P2P_RATE_MBIT:-100}
P2P_TOKEN=e2e-p2p-$$-$RANDOM
# Debug logs of the P2P crate: which source every piece came from, in the logs kept on failure.
P2P_NODE_LOG=info,wharf_p2p=debug
REPO=library/p2pimg
TAG=v1
ORIGIN_IP=198.18.0.2
SCHED_IP=198.18.0.3
# A pull (ideal: ~2 s) that takes this long has failed; the test must fit in 3 minutes.
P2P_PULL_TIMEOUT=${P2P_PULL_TIMEOUT:-60}

# expect_between NAME VALUE MIN MAX (decimal numbers)
expect_between() {
    if awk -v v="$2" -v lo="$3" -v hi="$4" 'BEGIN { exit !(v >= lo && v <= hi) }'; then
        pass "$1 ($2)"
    else
        fail "$1: got $2, want between $3 and $4"
    fi
}

# The EXIT trap: the processes and namespaces of the network first (with the logs shown if
# anything failed), then lib.sh's cleanup (dockerd, $WORK, the summary line and the status).
p2p_exit() {
    local rc=$? n
    [[ "$BASHPID" == "$MAIN_PID" ]] || return 0
    set +e
    if ((rc != 0 || FAILED > 0)); then
        for n in sched origin n1 dk; do
            if [[ -s "$NET_DIR/$n.log" ]]; then
                echo "---- last lines of $n.log ----" >&2
                tail -n 25 "$NET_DIR/$n.log" >&2
            fi
        done
    fi
    net_cleanup
    (exit "$rc")
    cleanup
}

# origin_blob_gets MARK: blob GET lines in the origin's request log after line MARK.
origin_blob_gets() {
    tail -n "+$(($1 + 1))" "$NET_DIR/origin.log" | grep -cE "request method=GET path=/v2/$REPO/blobs/" || true
}

# node_bytes NAME SOURCE: bytes node NAME fetched from SOURCE (origin or peer).
node_bytes() { p2p_metric "$1" "${NODE_MIRROR[$1]}" wharf_p2p_bytes_total "source=\"$2\""; }

# ---------------------------------------------------------------------------------------

setup() {
    ((EUID == 0)) || die "needs root (ip netns, tc)"
    local tool
    for tool in ip tc curl jq openssl nsenter; do
        command -v "$tool" >/dev/null || die "$tool is required"
    done
    [[ -x "$WHARF" ]] || die "wharf binary not found: $WHARF"
    net_init "$WORK/net"
    trap p2p_exit EXIT

    net_switch
    net_host origin "$ORIGIN_IP" "$RATE"
    net_host sched "$SCHED_IP" "$RATE"
    local i
    for ((i = 1; i <= NODES; i++)); do
        net_host "n$i" "$(node_ip "$i")" "$RATE"
    done
    net_host dk "$(node_ip $((NODES + 1)))" "$RATE"
    net_static_neighbors || return 1
    echo "network $NET_TAG: switch, origin $ORIGIN_IP, scheduler $SCHED_IP, nodes n1..n$NODES" \
        "$(node_ip 1)..$(node_ip "$NODES"), dk ${NET_IP[dk]}; every link ${RATE} Mbit/s each way"

    p2p_origin origin "$ORIGIN_IP" "$WORK/origin-root" || die "origin did not start"
    p2p_scheduler sched "$SCHED_IP" || die "scheduler did not start"
    echo "origin $ORIGIN_URL (pid $ORIGIN_PID), scheduler $SCHED_URL (pid $SCHED_PID)"

    # The image: 4 random layers, 24 MiB, in an OCI layout, pushed with curl.
    p2p_make_image "$WORK/layout" "$TAG" 12 6 4 2
    p2p_push_image origin "$WORK/layout" "$REPO" "$TAG" "$ORIGIN_URL" || die "push to the origin failed"
    echo "pushed $REPO:$TAG ($IMG_MANIFEST_DIGEST): $(wc -l <<<"$IMG_BLOBS") blobs, $IMG_BYTES bytes"

    # Odd nodes with a fixed peer send buffer, even ones with the kernel's autotuning: both serve the swarm.
    for ((i = 1; i <= NODES; i++)); do
        if ((i % 2)); then
            p2p_node_start "n$i" "$(node_ip "$i")" "$WORK/n$i-root" --peer-send-buffer 24K
        else
            p2p_node_start "n$i" "$(node_ip "$i")" "$WORK/n$i-root"
        fi
    done
    p2p_node_start dk "${NET_IP[dk]}" "$WORK/dk-root"
    for ((i = 1; i <= NODES; i++)); do
        p2p_node_wait "n$i" || die "node n$i did not start" "$NET_DIR/n$i.log"
    done
    p2p_node_wait dk || die "node dk did not start" "$NET_DIR/dk.log"
    echo "nodes started: n1 mirror ${NODE_MIRROR[n1]}, peer API ${NODE_PEER[n1]}, ..."
}

# 1. Every node pulls every blob at once; byte-identical everywhere; ~1 origin copy.
test_swarm_pull() {
    local specs=() i name d size bad=0 times=() origin=0 peer=0 b
    for ((i = 1; i <= NODES; i++)); do specs+=("n$i=${NODE_MIRROR[n$i]}"); done
    p2p_pull_all "$REPO" "$TAG" 1 "$WORK/pull" "${specs[@]}"

    local incomplete=0
    for ((i = 1; i <= NODES; i++)); do
        name=n$i
        if p2p_pull_check "$WORK/pull" "$name"; then
            times+=("$name $(p2p_pull_secs "$WORK/pull" "$name")s")
        else
            incomplete=$((incomplete + 1))
            cat "$WORK/pull/$name.err" >&2
        fi
        while read -r d size; do
            if [[ "sha256:$(p2p_sha256 "$WORK/pull/$name/${d#sha256:}" 2>/dev/null)" != "$d" ]]; then
                echo "$name: blob $d does not hash to its digest" >&2
                bad=$((bad + 1))
            fi
        done <<<"$IMG_BLOBS"
        rm -rf "${WORK:?}/pull/$name" # checked; the disk may be small
    done
    expect_eq "$NODES nodes pulled every blob at once: HTTP 200 and full size everywhere" "$incomplete" 0
    expect_eq "every blob byte-identical on every node (sha256 = digest, $((NODES * $(wc -l <<<"$IMG_BLOBS"))) blobs)" "$bad" 0
    echo "     completion times (ideal at $RATE Mbit/s: $(awk -v b="$IMG_BYTES" -v r="$RATE" 'BEGIN { printf "%.2f", b * 8 / r / 1e6 }')s): ${times[*]}"

    for ((i = 1; i <= NODES; i++)); do
        b=$(node_bytes "n$i" origin)
        origin=$((origin + b))
        peer=$((peer + $(node_bytes "n$i" peer)))
    done
    local ratio wire
    ratio=$(awk -v o="$origin" -v s="$IMG_BYTES" 'BEGIN { printf "%.4f", o / s }')
    wire=$(net_tx_bytes origin)
    echo "     from the origin: $origin bytes (${ratio}x the image); from peers: $peer bytes;" \
        "origin's interface sent $wire bytes on the wire"
    expect_between "origin egress, summed over the nodes' wharf_p2p_bytes_total{source=\"origin\"}, is 1.00x-1.05x the image" \
        "$ratio" 1.0 1.05
    # The counter above counts stored pieces only; an origin fetch that failed half-way (a
    # timeout, a reset) sent bytes it does not count. The origin's interface sees everything
    # (the push came from inside its namespace: not on the wire), TCP/IP headers included (~2%).
    expect_between "origin's interface sent at most 1.10x the image on the wire (headers and failed fetches included)" \
        "$(awk -v w="$wire" -v s="$IMG_BYTES" 'BEGIN { printf "%.4f", w / s }')" 1.0 1.10
    expect_eq "every node got every byte once: origin + peer bytes = $NODES x the image" \
        "$((origin + peer))" "$((NODES * IMG_BYTES))"
}

# sched_lists SWARMS_JSON NAME: 0 if the scheduler's /v1/swarms lists node NAME exactly once,
# with its peer API address and the id that goes with it.
sched_lists() {
    local got
    got=$(jq -r --arg a "${NODE_PEER[$2]}" \
        '[.peers[] | select(.addr == $a and .id == ($a | ltrimstr("http://")))] | length' <<<"$1")
    [[ "$got" == 1 ]] || {
        echo "scheduler lists $2 (${NODE_PEER[$2]}) $got times" >&2
        return 1
    }
}

swarms() { net_exec n1 curl -sS --fail -H "Authorization: Bearer $P2P_TOKEN" "$SCHED_URL/v1/swarms"; }

# 2. Advertised addresses: the namespace's own, in the node's line and at the scheduler. (A
# scheduler learns of a node when it first asks for pieces: dk is checked after its pull.)
test_advertised() {
    local name ip swarms bad=0
    for name in $(seq -f 'n%g' 1 "$NODES") dk; do
        ip=${NET_IP[$name]}
        [[ "${NODE_PEER[$name]}" =~ ^http://${ip//./\\.}:[0-9]+$ ]] || {
            echo "$name announced peer address ${NODE_PEER[$name]}, not on $ip" >&2
            bad=$((bad + 1))
        }
    done
    expect_eq "every node advertises its namespace's 198.18 address (auto-detected from the route to the scheduler)" "$bad" 0

    swarms=$(swarms) || die "GET /v1/swarms failed"
    bad=0
    for name in $(seq -f 'n%g' 1 "$NODES"); do
        sched_lists "$swarms" "$name" || bad=$((bad + 1))
    done
    expect_eq "scheduler's /v1/swarms lists each of the $NODES nodes once, with its 198.18 address and id" "$bad" 0
    expect_eq "scheduler's /v1/swarms: $NODES peers, all in 198.18.0.0/15 (none on 127.0.0.1)" \
        "$(jq '[.peers[] | select(.addr | test("^http://198\\.(18|19)\\.[0-9]+\\.[0-9]+:[0-9]+$"))] | length' <<<"$swarms") $(jq '.peers | length' <<<"$swarms")" \
        "$NODES $NODES"
    expect_eq "scheduler knows the $(wc -l <<<"$IMG_BLOBS") blobs as swarms, each done by all $NODES nodes" \
        "$(jq --argjson n "$NODES" '[.tasks[] | select((.done | length) == $n)] | length' <<<"$swarms")" \
        "$(wc -l <<<"$IMG_BLOBS")"
    expect_eq "scheduler refuses /v1/swarms without the token" \
        "$(net_exec n1 curl -sS -o /dev/null -w '%{http_code}' "$SCHED_URL/v1/swarms")" 401
}

# 3. A real Docker engine behind node dk.
test_docker() {
    # dockerd joins dk's network namespace only (nsenter --net), not a new mount namespace
    # as `ip netns exec` would make: lib.sh's cleanup must see (and unmount) its mounts.
    local real=$DOCKERD
    [[ -x "$real" ]] || die "dockerd not found at $real (apt-get install docker.io)"
    DOCKERD=$WORK/dockerd-in-$NET_TAG-dk
    printf '#!/bin/sh\nexec nsenter --net=/run/netns/%s %s "$@"\n' "$NET_TAG-dk" "$real" >"$DOCKERD"
    chmod +x "$DOCKERD"
    start_dockerd wharf-e2e-p2p --registry-mirror "${NODE_MIRROR[dk]}" --insecure-registry 198.18.0.0/15
    echo "dockerd in namespace $NET_TAG-dk, registry mirror: $("$DOCKER_CLI" info -f '{{.RegistryConfig.Mirrors}}')"

    local omark d cid f bad=0
    omark=$(wc -l <"$NET_DIR/origin.log")
    run "$WORK/pull1.log" timeout 60 "$DOCKER_CLI" pull "p2pimg:$TAG"
    expect_eq "docker pull p2pimg:$TAG through node dk: the pushed manifest digest" \
        "$(pull_digest "$WORK/pull1.log")" "$IMG_MANIFEST_DIGEST"
    expect_eq "docker: image ID is the pushed config" "$(image_id "p2pimg:$TAG")" "$IMG_CONFIG"
    cid=$("$DOCKER_CLI" create --network none "p2pimg:$TAG" /nonexistent)
    mkdir -p "$WORK/docker-files"
    "$DOCKER_CLI" cp "$cid:/data" - | tar -xf - -C "$WORK/docker-files"
    "$DOCKER_CLI" rm "$cid" >/dev/null
    for f in "$WORK/layout.files"/layer*.bin; do
        cmp -s "$f" "$WORK/docker-files/data/${f##*/}" || {
            echo "docker image file /data/${f##*/} differs from the original" >&2
            bad=$((bad + 1))
        }
    done
    expect_eq "docker: every layer's file in the image is byte-identical to the original" "$bad" 0
    expect_eq "docker's pull came from the peers: node dk fetched the image's $IMG_BYTES bytes from them" \
        "$(node_bytes dk peer)" "$IMG_BYTES"
    expect_eq "docker's pull took nothing from the origin (node dk's origin bytes)" "$(node_bytes dk origin)" 0
    expect_eq "origin served no blob during docker's pull" "$(origin_blob_gets "$omark")" 0
    local swarms
    swarms=$(swarms) || die "GET /v1/swarms failed"
    if sched_lists "$swarms" dk; then
        pass "scheduler lists node dk with its 198.18 address (${NODE_PEER[dk]})"
    else
        fail "scheduler does not list node dk with its 198.18 address"
    fi

    run_quiet "$WORK/rmi.log" "$DOCKER_CLI" rmi "p2pimg:$TAG"
    expect_eq "docker rmi: no image left" "$("$DOCKER_CLI" images -aq | wc -l)" 0
    omark=$(wc -l <"$NET_DIR/origin.log")
    run "$WORK/pull2.log" timeout 60 "$DOCKER_CLI" pull "p2pimg:$TAG"
    expect_eq "second docker pull: same digest and image ID" \
        "$(pull_digest "$WORK/pull2.log") $(image_id "p2pimg:$TAG")" "$IMG_MANIFEST_DIGEST $IMG_CONFIG"
    expect_eq "second docker pull: served from node dk's cache (no new byte from peers or origin)" \
        "$(node_bytes dk peer) $(node_bytes dk origin)" "$IMG_BYTES 0"
    expect_eq "second docker pull: origin served no blob" "$(origin_blob_gets "$omark")" 0
}

# 4. A peer killed mid-transfer: a second image at 20 Mbit/s; as soon as one of the nodes has
#    served a piece to another node, it is killed (SIGKILL). The other nodes finish,
#    byte-identical, from the other peers or the origin, and the origin sends well under a
#    copy per node.
# Pieces NAME has served to peers, from its disk or relayed while they arrived.
node_served() {
    local held relayed
    held=$(p2p_metric "$1" "${NODE_MIRROR[$1]}" wharf_p2p_pieces_served_total 2>/dev/null) || held=0
    relayed=$(p2p_metric "$1" "${NODE_MIRROR[$1]}" wharf_p2p_pieces_relayed_total 2>/dev/null) || relayed=0
    echo $((held + relayed))
}

test_peer_killed() {
    local i name d size bad=0 incomplete=0 after=0 served=0 waited=0 victim="" n
    for ((i = 1; i <= NODES; i++)); do net_shape "n$i" 20; done
    net_shape origin 20
    p2p_make_image "$WORK/layout2" v2 8 6 4 || die "second image not made"
    p2p_push_image origin "$WORK/layout2" "$REPO" v2 "$ORIGIN_URL" || die "push of the second image failed"
    declare -A served0 origin0
    for ((i = 1; i <= NODES; i++)); do
        served0[n$i]=$(node_served "n$i")
        origin0[n$i]=$(node_bytes "n$i" origin)
    done
    local specs=()
    for ((i = 1; i <= NODES; i++)); do specs+=("n$i=${NODE_MIRROR[n$i]}"); done
    local t0
    t0=$(date +%s%N)
    p2p_pull_all "$REPO" v2 1 "$WORK/pull2" "${specs[@]}" &
    local puller=$!
    # The first node to serve something (not one chosen in advance, which the scheduler may
    # never pick as a source; not after a guessed delay) is killed: mid-transfer by then.
    while [[ -z $victim ]] && ((waited < 300)); do
        for ((i = 1; i <= NODES; i++)); do
            name=n$i
            n=$(node_served "$name")
            if ((n > ${served0[$name]})); then
                victim=$name served=$((n - ${served0[$name]}))
                break
            fi
        done
        [[ -n $victim ]] && break
        sleep 0.1
        waited=$((waited + 1))
    done
    [[ -n $victim ]] || victim=n1
    kill -KILL "${NODE_PID[$victim]}" 2>/dev/null || true
    echo "     $victim killed after serving $served piece(s), $((waited / 10)).$((waited % 10)) s into the pull"
    wait "$puller" || true
    local others=()
    for ((i = 1; i <= NODES; i++)); do [[ n$i == "$victim" ]] || others+=("n$i"); done
    echo "     the others' completion (s from the start; ideal $(awk -v b="$IMG_BYTES" 'BEGIN { printf "%.1f", b * 8 / 20e6 }')):" \
        "$(for name in "${others[@]}"; do cat "$WORK/pull2/$name.res" 2>/dev/null; done | awk -v t0="$t0" '$1 == "end" { printf "%.1f ", ($2 - t0) / 1e9 }')"
    for name in "${others[@]}"; do
        if ! p2p_pull_check "$WORK/pull2" "$name"; then
            incomplete=$((incomplete + 1))
            cat "$WORK/pull2/$name.err" >&2
        fi
        while read -r d size; do
            if [[ "sha256:$(p2p_sha256 "$WORK/pull2/$name/${d#sha256:}" 2>/dev/null)" != "$d" ]]; then
                bad=$((bad + 1))
            fi
        done <<<"$IMG_BLOBS"
        after=$((after + $(node_bytes "$name" origin) - origin0[$name]))
    done
    expect_between "$victim was killed mid-transfer (it had served pieces of the second image)" "$served" 1 1000000
    expect_eq "the $((NODES - 1)) other nodes finished the pull (within ${P2P_PULL_TIMEOUT}s)" "$incomplete" 0
    expect_eq "every blob byte-identical on the other nodes" "$bad" 0
    expect_between "origin egress for the second image, over the other nodes, under 2x the image" \
        "$(awk -v o="$after" -v s="$IMG_BYTES" 'BEGIN { printf "%.4f", o / s }')" 0.5 2.0
}

# 5. containerd behind node dk, configured the containerd way: a hosts.toml for the origin's
#    registry host names node dk as a mirror, so containerd asks it with ?ns=<origin host>
#    and the node picks the upstream by that name. containerd is Docker's own (started by
#    the dockerd of step 3, private namespace); `ctr` resolves and fetches from dk's network
#    namespace. It pulls (and unpacks) the second image, which only the peers hold.
ctr_dk() { timeout 120 nsenter --net="/run/netns/$NET_TAG-dk" ctr --address "$CTR_SOCK" --namespace wharf-e2e-ctr "$@"; }
test_containerd() {
    local host omark peer0 origin0
    CTR_SOCK=$(find "$WORK/exec" -name containerd.sock -print -quit 2>/dev/null)
    [[ -S "$CTR_SOCK" ]] || die "dockerd's containerd socket not found under $WORK/exec"
    host=${ORIGIN_URL#http://}
    mkdir -p "$WORK/certs.d/$host"
    printf 'server = "%s"\n\n[host."%s"]\n  capabilities = ["pull", "resolve"]\n' \
        "$ORIGIN_URL" "${NODE_MIRROR[dk]}" >"$WORK/certs.d/$host/hosts.toml"
    omark=$(wc -l <"$NET_DIR/origin.log")
    peer0=$(node_bytes dk peer)
    origin0=$(node_bytes dk origin)
    run_quiet "$WORK/ctr-pull.log" ctr_dk images pull --hosts-dir "$WORK/certs.d" "$host/$REPO:v2"
    echo "     ctr images pull: $(tail -n 1 "$WORK/ctr-pull.log")"
    expect_eq "containerd (hosts.toml mirror = node dk) pulled $host/$REPO:v2: the pushed manifest digest" \
        "$(ctr_dk images ls | awk -v r="$host/$REPO:v2" '$1 == r { print $3 }')" "$IMG_MANIFEST_DIGEST"
    expect_eq "containerd unpacked the image (ctr images check: complete, unpacked)" \
        "$(ctr_dk images check 2>/dev/null | awk -v r="$host/$REPO:v2" '$1 == r { print $4, $NF }')" "complete true"
    expect_eq "containerd's pull came from the peers through node dk" \
        "$(($(node_bytes dk peer) - peer0)) $(($(node_bytes dk origin) - origin0))" "$IMG_BYTES 0"
    expect_eq "origin served no blob during containerd's pull" "$(origin_blob_gets "$omark")" 0
    # The namespace is what picks the upstream: a registry host the node has no upstream for is refused.
    expect_eq "node dk: a manifest with ?ns=$host is found, with ?ns=198.18.255.254:5000 (no such upstream) it is not" \
        "$(for ns in "$host" 198.18.255.254:5000; do
            net_exec dk curl -s -o /dev/null -w '%{http_code} ' \
                "${NODE_MIRROR[dk]}/v2/$REPO/manifests/v2?ns=$ns" -H 'Accept: application/vnd.oci.image.manifest.v1+json'
        done)" "200 404 "
    ctr_dk images rm "$host/$REPO:v2" >/dev/null 2>&1 || true
}

# test_send_buffer: the connections the odd nodes' peer APIs served (kept alive by their clients) have the send
# buffer --peer-send-buffer fixed: 2 x 24K, as `ss -tm` shows it (skmem tb), and autotuning off.
test_send_buffer() {
    local i port tbs=""
    for ((i = 1; i <= NODES; i += 2)); do
        port=${NODE_PEER[n$i]##*:}
        tbs+=$(net_exec "n$i" ss -tmnH state established "( sport = :$port )" | grep -o 'tb[0-9]*' || true)$'\n'
    done
    tbs=$(grep . <<<"$tbs" | sort | uniq -c | tr -s ' ' || true)
    echo "     served peer connections of the odd nodes, by send buffer:" ${tbs:-none}
    expect_eq "nodes with --peer-send-buffer 24K serve peers on connections with a 48K send buffer, and no other" \
        "$(grep -vc ' tb49152$' <<<"$tbs" || true) $(grep -c ' tb49152$' <<<"$tbs" || true)" "0 1"
}

setup
test_swarm_pull
test_send_buffer
test_advertised
test_docker
test_peer_killed
test_containerd

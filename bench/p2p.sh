#!/usr/bin/env bash
# bench/p2p.sh: P2P distribution on an emulated network. N nodes pull one image at once,
# (a) through P2P (`wharf node` mirrors, a `wharf scheduler`, the origin `wharf serve`),
# (b) directly from the origin; every link rate-limited. Measures the origin's egress and
# each node's completion time against the ideal.
#
# Usage:
#   cargo build --release -p wharf && bench/p2p.sh
#   CASES="48:20" bench/p2p.sh                     # one case: 48 nodes at 20 Mbit/s
#   NS="4 16" RATES="20 100" bench/p2p.sh          # every N at every rate
#
# Knobs (environment):
#   WHARF         wharf binary (copied to the scratch dir first, so a rebuild cannot swap it
#                 mid-run)                                (default ./target/release/wharf)
#   CASES         "N:MBIT ..." cases, run in this order   (default "4:20 8:100 16:20 48:20")
#   NS, RATES     if either is set, CASES is every N in NS at every MBIT in RATES
#                 (defaults for the missing one: "4 16 48", "20")
#   IMAGE_MIB     image size in MiB                       (default 64)
#   P2P_PIECE     the nodes' --piece-size                (default 4M, the nodes' default)
#   LAYERS_MIB    layer sizes in MiB, overrides IMAGE_MIB (default IMAGE_MIB split 1/2, 1/4,
#                 1/8, 1/8: "32 16 8 8")
#   DIRECT_MAX_N  largest N whose direct pull is run; above it the direct row is computed
#                 (N x ideal: the origin link carries N copies), marked "computed"  (default 16)
#   MODES         "p2p direct", or one of them            (default both)
#   PULL_TIMEOUT_X  a P2P pull not done after this many times the ideal time (at least 60 s)
#                 has failed; direct pulls get 1.5 x N x ideal + 60 s        (default 8)
#   NET_MTU       MTU of every link (default 1500; 9000 = jumbo frames, a sixth of the packets
#                 for this machine's kernel to switch and shape)
#   NET_SWITCH_QUEUE_MS  a switch port's queue, ms (default 50)
#   NET_SYSCTLS   sysctls set in every host's namespace, "key=v1,v2 ..." (commas stand for
#                 spaces), for experiments: e.g. net.ipv4.tcp_rmem=4096,49152,49152
#   P2P_NODE_ARGS, P2P_SCHED_ARGS  more flags for every node / the scheduler, e.g.
#                 P2P_NODE_ARGS="--peer-send-buffer 24K" (the README's table)
#   BENCH_TMP     parent of the scratch dir: origin storage, node caches, the image (needs
#                 ~(max N + 3) x image); tmpfs is right here, the disk is not what is measured
#                 (default /dev/shm)
#   OUT_DIR       results (p2p.json) and logs of every process (p2p-raw/<date>-<pid>/, one
#                 directory per run)                      (default bench/out, gitignored)
#
# The network (tests/e2e/p2p-net.sh): a bridge in its own namespace, and a namespace per
# host (origin, scheduler, each node) on a veth shaped with tc tbf on both ends to MBIT each
# way; addresses in 198.18.0.0/15, no route anywhere else. The image: LAYERS_MIB random
# tar+gzip layers and a config, pushed to the origin with curl as library/p2pimg:v1.
#
# A pull, on every node at the same instant (released together through a FIFO): GET the
# manifest, then every blob at once (one curl, one connection per blob) to /dev/null; the
# node's time is from the release to its last byte. In P2P mode the node's mirror (a fresh
# `wharf node` with an empty cache, and a fresh scheduler, per case) serves the pull; in
# direct mode the origin does. Every blob must arrive with HTTP 200 and its full size (a
# node's mirror verifies each piece's SHA-256 and the whole blob's digest before the last
# byte goes out).
#
# Reported per case and mode:
#   origin egress   bytes the origin sent as blob payload / image bytes. P2P: the nodes'
#                   wharf_p2p_bytes_total{source="origin"} summed (pieces stored: a range
#                   fetch that failed half-way is not counted); direct: the bytes the nodes
#                   received. wire/img: every byte the origin's interface sent (TCP/IP headers,
#                   manifests and failed fetches included) / image bytes.
#   p50, p99        node completion times (nearest rank) / ideal, ideal = image bytes x 8 /
#                   link rate: one node's link carrying the image once, with no overhead.
#                   TCP/IP headers alone cost ~4-5% on these links (tbf counts whole
#                   frames), so 1.05 is about the best any mode can measure.
#   link use        (log and JSON) per quarter of the ideal time from the release: the
#                   origin's upload and the nodes' mean upload and download, in % of the link
#                   rate, from the switch ports' byte counters sampled every 0.5 s. Where the
#                   time goes: an idle origin or idle node uploads while nodes still wait.
#   TCP aborts      (notes and JSON) connections the kernels of origin and nodes reset after
#                   retransmitting in vain during the case (TcpExtTCPAbortOnTimeout; the JSON
#                   also has local retransmit failures and retransmitted segments): should be 0.
#   CPU             CPU seconds used by the wharf processes (nodes, scheduler, origin) during
#                   the case, and how busy the whole machine was (all cores; includes the
#                   kernel's packet shaping and other people's work). Near 100% busy means
#                   the machine, not the protocol, set the pace.
# Targets (from the issue): origin egress <= 1.05x at every N; P2P p50 <= 1.2x and p99 <=
# 1.5x ideal at N=48.
set -euo pipefail

for var in WHARF OUT_DIR BENCH_TMP; do
    if [[ -n ${!var:-} ]]; then printf -v "$var" '%s' "$(realpath -m "${!var}")"; fi
done
cd "$(dirname "$0")/.."
REPO_ROOT=$PWD

WHARF=${WHARF:-./target/release/wharf}
if [[ -n ${NS:-} || -n ${RATES:-} ]]; then
    CASES=""
    for r in ${RATES:-20}; do
        for n in ${NS:-4 16 48}; do CASES+="$n:$r "; done
    done
fi
CASES=${CASES:-"4:20 8:100 16:20 48:20"}
IMAGE_MIB=${IMAGE_MIB:-64}
LAYERS_MIB=${LAYERS_MIB:-"$((IMAGE_MIB / 2)) $((IMAGE_MIB / 4)) $((IMAGE_MIB / 8)) $((IMAGE_MIB - IMAGE_MIB / 2 - IMAGE_MIB / 4 - IMAGE_MIB / 8))"}
DIRECT_MAX_N=${DIRECT_MAX_N:-16}
PULL_TIMEOUT_X=${PULL_TIMEOUT_X:-8}
MODES=${MODES:-"p2p direct"}
BENCH_TMP=${BENCH_TMP:-/dev/shm}
OUT_DIR=${OUT_DIR:-bench/out}

REPO=library/p2pimg
TAG=v1
ORIGIN_IP=198.18.0.2
SCHED_IP=198.18.0.3
P2P_TOKEN=bench-$$-$RANDOM
P2P_ORIGIN_LOG=info # request-level logs of thousands of range GETs are not what we measure

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    printf '[bench] FATAL: %s\n' "$*" >&2
    exit 1
}

# shellcheck source-path=SCRIPTDIR source=../tests/e2e/p2p-net.sh
. "$REPO_ROOT/tests/e2e/p2p-net.sh"

SCRATCH=""
bench_exit() {
    [[ "${NET_MAIN_PID:-$BASHPID}" == "$BASHPID" ]] || return 0
    net_cleanup 2>/dev/null || true
    if [[ -n $SCRATCH && -d $SCRATCH ]]; then rm -rf "$SCRATCH"; fi
}
trap bench_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------
# Preflight
# ---------------------------------------------------------------------------------------
MAX_N=0
preflight() {
    ((EUID == 0)) || die "needs root (ip netns, tc)"
    local tool c n r
    for tool in ip tc curl jq openssl awk getconf; do
        command -v "$tool" >/dev/null || die "$tool is required"
    done
    [[ -x $WHARF ]] || die "wharf binary not found at $WHARF (cargo build --release -p wharf, or set WHARF=)"
    for c in $CASES; do
        [[ $c =~ ^([1-9][0-9]*):([1-9][0-9]*)$ ]] || die "a case is N:MBIT, got '$c'"
        n=${BASH_REMATCH[1]} r=${BASH_REMATCH[2]}
        ((n > MAX_N)) && MAX_N=$n
        ((n <= 1000)) || die "N=$n: at most 1000 nodes"
        : "$r"
    done
    [[ $DIRECT_MAX_N =~ ^[0-9]+$ ]] || die "DIRECT_MAX_N is a number, got '$DIRECT_MAX_N'"
    mkdir -p "$OUT_DIR" "$BENCH_TMP"
    OUT_DIR=$(realpath "$OUT_DIR")
    # A directory per run: a run never deletes another's logs (two may share OUT_DIR).
    RAW=$OUT_DIR/p2p-raw/$(date -u +%Y%m%d-%H%M%S)-$$
    mkdir -p "$RAW"
    SCRATCH=$(mktemp -d "$BENCH_TMP/wharf-p2p-bench.XXXXXX")
    local total=0 m need avail
    for m in $LAYERS_MIB; do total=$((total + m)); done
    need=$(((MAX_N + 3) * total * 1024 + 200 * 1024))
    avail=$(df -Pk "$SCRATCH" | awk 'NR == 2 { print $4 }')
    ((avail > need)) || die "need ~$((need / 1024)) MiB free under $BENCH_TMP, have $((avail / 1024))"
    cp "$WHARF" "$SCRATCH/wharf"
    WHARF_SRC=$(realpath "$WHARF")
    # Which build this was: the tree may have moved on since it was built.
    WHARF_BUILD="built $(date -u -r "$WHARF_SRC" +%FT%TZ), sha256 $(p2p_sha256 "$SCRATCH/wharf" | cut -c1-12)"
    WHARF=$SCRATCH/wharf
    log "scratch $SCRATCH ($(stat -f -c %T "$SCRATCH")), logs $RAW, wharf $WHARF_SRC ($("$WHARF" --version 2>/dev/null || echo '?'))"
}

# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------

# machine_ticks: "busy total" jiffies of all CPUs so far, from /proc/stat.
machine_ticks() {
    awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}

# pct BUSY0 TOTAL0 BUSY1 TOTAL1
busy_pct() { awk -v b0="$1" -v t0="$2" -v b1="$3" -v t1="$4" 'BEGIN { printf "%.0f", (t1 > t0) ? 100 * (b1 - b0) / (t1 - t0) : 0 }'; }

# percentile P FILE: nearest-rank P-th percentile of FILE's "seconds ok|fail" lines; a
# failed pull ranks last and reads as ">TIMEOUT".
percentile() {
    awk '{ print ($2 == "fail" ? 1 : 0), $1, $2 }' "$2" | sort -k1,1n -k2,2g |
        awk -v p="$1" '{ v[NR] = $2; f[NR] = $3 } END {
            r = int(p / 100 * NR); if (r < p / 100 * NR) r++; if (r < 1) r = 1
            print (f[r] == "fail" ? ">" : "") v[r] }'
}

# xideal SECONDS IDEAL: SECONDS / IDEAL, keeping a leading ">".
xideal() {
    local gt=""
    [[ $1 == ">"* ]] && gt=">"
    echo "$gt$(ratio "${1#>}" "$2")"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }'; }

# tcp_counters N: net_tcp_counters summed over the origin and nodes n1..nN.
tcp_counters() {
    local name a b c t=(0 0 0)
    for name in origin $(seq -f 'n%g' 1 "$1"); do
        read -r a b c < <(net_tcp_counters "$name")
        t=($((t[0] + a)) $((t[1] + b)) $((t[2] + c)))
    done
    echo "${t[*]}"
}

# run_case N MBIT MODE: one measurement; appends a JSON record to $RAW/results.jsonl and a
# table row to ROWS.
run_case() {
    local n=$1 mbit=$2 mode=$3 i name specs=() failed=0
    local ideal tag=$1x${2}M-$3
    NET_DIR=$RAW/$tag
    mkdir -p "$NET_DIR"
    ideal=$(awk -v b="$IMG_BYTES" -v r="$mbit" 'BEGIN { printf "%.3f", b * 8 / (r * 1e6) }')

    if [[ $mode == direct ]] && ((n > DIRECT_MAX_N)); then
        # Not run: the origin's link carries N copies, so every node finishes at about N x ideal.
        local t
        t=$(awk -v n="$n" -v i="$ideal" 'BEGIN { printf "%.1f", n * i }')
        log "$tag: computed, not run (N > DIRECT_MAX_N=$DIRECT_MAX_N): ~$t s for every node"
        ROWS+=("$(printf '%4s %6s  %-17s %8s %6s %9s %9s %8s %8s %7s %10s  %s' \
            "$n" "$mbit" "direct (computed)" "$n.00" "~$n" "~$n.00" "~$n.00" "~$t" "~$t" "$ideal" "-" "N x ideal, not measured")")
        jq -cn --argjson n "$n" --argjson r "$mbit" --argjson ideal "$ideal" \
            '{nodes: $n, rate_mbit: $r, mode: "direct", computed: true, origin_egress_x: $n,
              p50_x: $n, p99_x: $n, ideal_s: $ideal}' >>"$RAW/results.jsonl"
        return 0
    fi

    for name in origin sched $(seq -f 'n%g' 1 "$MAX_N"); do net_shape "$name" "$mbit"; done
    local cpu_pids=("$ORIGIN_PID")
    if [[ $mode == p2p ]]; then
        p2p_scheduler sched "$SCHED_IP" || die "$tag: scheduler did not start"
        cpu_pids+=("$SCHED_PID")
        for ((i = 1; i <= n; i++)); do
            rm -rf "$SCRATCH/n$i"
            p2p_node_start "n$i" "$(node_ip "$i")" "$SCRATCH/n$i"
        done
        for ((i = 1; i <= n; i++)); do
            p2p_node_wait "n$i" || die "$tag: node n$i did not start"
            cpu_pids+=("${NODE_PID[n$i]}")
            specs+=("n$i=${NODE_MIRROR[n$i]}")
        done
    else
        for ((i = 1; i <= n; i++)); do specs+=("n$i=$ORIGIN_URL"); done
    fi

    sync
    local origin_cpu0 tx0 m0 m1 cpu1 tx1 wall
    origin_cpu0=$(net_cpu_secs "$ORIGIN_PID")
    tx0=$(net_tx_bytes origin)
    read -r -a m0 < <(machine_ticks)
    # A pull not done by then has failed: P2P at PULL_TIMEOUT_X x ideal, direct at 1.5 x N x ideal.
    if [[ $mode == p2p ]]; then
        P2P_PULL_TIMEOUT=$(awk -v i="$ideal" -v x="$PULL_TIMEOUT_X" 'BEGIN { t = i * x; printf "%d", t < 60 ? 60 : t }')
    else
        P2P_PULL_TIMEOUT=$(awk -v i="$ideal" -v n="$n" 'BEGIN { printf "%d", 1.5 * n * i + 60 }')
    fi
    log "$tag: $n nodes pull $IMG_BYTES bytes at once (ideal ${ideal}s each; timeout ${P2P_PULL_TIMEOUT}s)"
    local tcp0
    tcp0=$(tcp_counters "$n")
    net_sample_start "$NET_DIR/samples" 0.5
    p2p_pull_all "$REPO" "$TAG" 0 "$NET_DIR/pull" "${specs[@]}"
    net_sample_stop
    local tcp
    tcp=$(awk -v a="$tcp0" -v b="$(tcp_counters "$n")" 'BEGIN { split(a, x, " "); split(b, y, " ");
        printf "%d %d %d", y[1] - x[1], y[2] - x[2], y[3] - x[3] }')
    wall=$(awk -v t0="$PULL_T0" -v t1="$(date +%s%N)" 'BEGIN { printf "%.1f", (t1 - t0) / 1e9 }')
    read -r -a m1 < <(machine_ticks)
    tx1=$(net_tx_bytes origin)
    # CPU of this case: every process but the origin is new; the origin's is a difference.
    cpu1=$(awk -v a="$(net_cpu_secs "${cpu_pids[@]}")" -v o0="$origin_cpu0" 'BEGIN { printf "%.1f", a - o0 }')

    # "seconds ok|fail" per node; a failed pull counts as never done (rank above every done one).
    : >"$NET_DIR/times"
    for ((i = 1; i <= n; i++)); do
        if p2p_pull_check "$NET_DIR/pull" "n$i" 2>>"$NET_DIR/failures"; then
            echo "$(p2p_pull_secs "$NET_DIR/pull" "n$i") ok" >>"$NET_DIR/times"
        else
            echo "$P2P_PULL_TIMEOUT fail" >>"$NET_DIR/times"
            failed=$((failed + 1))
        fi
    done

    local origin_bytes=0 peer_bytes=0 back=0 bad=0 unreachable=0
    if [[ $mode == p2p ]]; then
        for ((i = 1; i <= n; i++)); do
            origin_bytes=$((origin_bytes + $(p2p_metric "n$i" "${NODE_MIRROR[n$i]}" wharf_p2p_bytes_total 'source="origin"')))
            peer_bytes=$((peer_bytes + $(p2p_metric "n$i" "${NODE_MIRROR[n$i]}" wharf_p2p_bytes_total 'source="peer"')))
            back=$((back + $(p2p_metric "n$i" "${NODE_MIRROR[n$i]}" wharf_p2p_back_to_source_total)))
            bad=$((bad + $(p2p_metric "n$i" "${NODE_MIRROR[n$i]}" wharf_p2p_bad_pieces_total)))
            net_exec "n$i" curl -sS --max-time 10 "${NODE_MIRROR[n$i]}/metrics" >"$NET_DIR/n$i.metrics" || true
        done
        net_exec sched curl -sS --max-time 10 -H "Authorization: Bearer $P2P_TOKEN" "$SCHED_URL/metrics" >"$NET_DIR/sched.metrics" || true
        net_exec sched curl -sS --max-time 10 -H "Authorization: Bearer $P2P_TOKEN" "$SCHED_URL/v1/swarms" \
            >"$NET_DIR/swarms.json" || true
        unreachable=$(grep -c 'peer reported unreachable' "$NET_DIR/sched.log" || true)
        for ((i = n; i >= 1; i--)); do net_stop "${NODE_PID[n$i]}"; done
        net_stop "$SCHED_PID"
        for ((i = 1; i <= n; i++)); do rm -rf "$SCRATCH/n$i"; done
    else
        origin_bytes=$(cat "$NET_DIR"/pull/*.res | awk '$1 ~ /^sha256:/ { s += $3 } END { printf "%.0f", s }')
    fi

    # Link utilization over time, in buckets of a quarter of the ideal time.
    local bucket ports=()
    bucket=$(awk -v i="$ideal" 'BEGIN { b = int(i / 4 + 0.5); print b < 1 ? 1 : b }')
    for ((i = 1; i <= n; i++)); do ports+=("${NET_PORT[n$i]}"); done
    net_utilization "$NET_DIR/samples" "$mbit" "$bucket" "$PULL_T0" "${NET_PORT[origin]}" "${ports[@]}" \
        >"$NET_DIR/utilization"
    log "$tag: link use in % of $mbit Mbit/s per ${bucket} s from the release:"
    sed 's/^/[bench]     /' "$NET_DIR/utilization" >&2

    local egress wire p50 p99 busy note="" tcpv
    egress=$(ratio "$origin_bytes" "$IMG_BYTES")
    wire=$(ratio "$((tx1 - tx0))" "$IMG_BYTES")
    busy=$(busy_pct "${m0[0]}" "${m0[1]}" "${m1[0]}" "${m1[1]}")
    if [[ -s $NET_DIR/times ]]; then
        p50=$(percentile 50 "$NET_DIR/times")
        p99=$(percentile 99 "$NET_DIR/times")
    else
        p50=0 p99=0
    fi
    [[ $p50 == ">"* ]] || p50=$(printf '%.1f' "$p50")
    [[ $p99 == ">"* ]] || p99=$(printf '%.1f' "$p99")
    ((failed == 0)) || note+="FAILED: $failed of $n nodes incomplete; "
    [[ $mode == p2p ]] && note+="peer bytes $(ratio "$peer_bytes" "$IMG_BYTES")x, back-to-source $back, unreachable reports $unreachable"
    ((bad == 0)) || note+=", bad pieces $bad"
    read -r -a tcpv <<<"$tcp"
    ((tcpv[0] == 0)) || note+="${note:+, }TCP connections aborted by the kernel ${tcpv[0]}"
    ROWS+=("$(printf '%4s %6s  %-17s %8s %6s %9s %9s %8s %8s %7s %10s  %s' \
        "$n" "$mbit" "$mode" "$egress" "$wire" "$(xideal "$p50" "$ideal")" "$(xideal "$p99" "$ideal")" \
        "$p50" "$p99" "$ideal" "$cpu1/$busy%" "$note")")
    log "${ROWS[-1]}"
    jq -cn --argjson n "$n" --argjson r "$mbit" --arg mode "$mode" --argjson ideal "$ideal" \
        --argjson egress "$egress" --argjson wire "$wire" --argjson ob "$origin_bytes" --argjson pb "$peer_bytes" \
        --arg p50 "$p50" --arg p99 "$p99" --argjson wall "$wall" --argjson timeout "$P2P_PULL_TIMEOUT" --argjson cpu "$cpu1" --argjson busy "$busy" \
        --argjson failed "$failed" --argjson back "$back" --argjson bad "$bad" --argjson unreach "$unreachable" \
        --argjson bucket "$bucket" --argjson tcp "[${tcp// /,}]" \
        --argjson util "$(jq -Rs 'split("\n") | map(select(length > 0) | split(" ") | {key: .[0], value: (.[1:] | map(tonumber))}) | from_entries' "$NET_DIR/utilization")" \
        --argjson times "$(jq -Rs 'split("\n") | map(select(length > 0) | split(" ") | select(.[1] == "ok") | .[0] | tonumber) | sort' "$NET_DIR/times")" \
        '{nodes: $n, rate_mbit: $r, mode: $mode, computed: false, ideal_s: $ideal,
          origin_egress_x: $egress, origin_wire_tx_x: $wire, origin_payload_bytes: $ob, peer_bytes: $pb,
          p50_s: (if ($p50 | startswith(">")) then $p50 else ($p50 | tonumber) end),
          p99_s: (if ($p99 | startswith(">")) then $p99 else ($p99 | tonumber) end),
          timeout_s: $timeout, wall_s: $wall,
          p50_x: (if ($p50 | startswith(">")) then null else ($p50 | tonumber) / $ideal end),
          p99_x: (if ($p99 | startswith(">")) then null else ($p99 | tonumber) / $ideal end),
          completion_s: $times, wharf_cpu_s: $cpu, machine_busy_pct: $busy, failed_nodes: $failed,
          back_to_source: $back, bad_pieces: $bad, unreachable_reports: $unreach,
          link_use_pct: ($util + {bucket_s: $bucket}),
          tcp: {aborted_on_timeout: $tcp[0], local_retransmit_failures: $tcp[1], retransmitted_segments: $tcp[2]}}' \
        >>"$RAW/results.jsonl"
    FAILURES=$((FAILURES + failed))
}

# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------
main() {
    preflight
    net_init "$RAW/setup"
    net_switch
    net_host origin "$ORIGIN_IP"
    net_host sched "$SCHED_IP"
    local i c
    for ((i = 1; i <= MAX_N; i++)); do net_host "n$i" "$(node_ip "$i")"; done
    net_static_neighbors || die "cannot set the neighbor tables"
    log "network $NET_TAG: origin, scheduler and $MAX_N node namespaces"

    # shellcheck disable=SC2086 # a list of sizes
    p2p_make_image "$SCRATCH/layout" "$TAG" $LAYERS_MIB
    rm -rf "$SCRATCH/layout.files" # the layer files are for content checks, not needed here
    p2p_origin origin "$ORIGIN_IP" "$SCRATCH/origin" || die "origin did not start"
    p2p_push_image origin "$SCRATCH/layout" "$REPO" "$TAG" "$ORIGIN_URL" || die "push failed"
    log "image $REPO:$TAG: layers $LAYERS_MIB MiB, $IMG_BYTES bytes in $(wc -l <<<"$IMG_BLOBS") blobs"

    ROWS=()
    FAILURES=0
    local started=$SECONDS mode
    for c in $CASES; do
        for mode in $MODES; do
            run_case "${c%%:*}" "${c##*:}" "$mode"
        done
    done

    local header
    header=$(printf '%4s %6s  %-17s %8s %6s %9s %9s %8s %8s %7s %10s  %s' \
        N Mbit/s mode egress/img wire/img p50/ideal p99/ideal "p50 s" "p99 s" "ideal s" "CPU s/busy" notes)
    {
        echo
        echo "P2P benchmark: image $IMG_BYTES bytes (layers $LAYERS_MIB MiB, ${P2P_PIECE:-4M} pieces), every link shaped both ways"
        echo "wharf $WHARF_SRC ($WHARF_BUILD; tree $(git describe --always --dirty 2>/dev/null || echo unknown))"
        echo "$(nproc) cores; $(date -u +%FT%TZ); $((SECONDS - started)) s"
        echo "$header"
        printf '%s\n' "${ROWS[@]}"
        echo
        echo "egress/img: origin blob payload / image (P2P: nodes' wharf_p2p_bytes_total{source=\"origin\"}, which counts"
        echo "  stored pieces only); wire/img: all bytes the origin's interface sent / image (headers, and fetches"
        echo "  that failed half-way, included)."
        echo "p50, p99: node completion time (release to last byte, nearest rank) / ideal; ideal = image x 8 / rate."
        echo "TCP/IP headers take ~4-5% of each shaped link, so ~1.05 is the floor of every ratio."
        echo "CPU s/busy: CPU seconds of the wharf processes in the case / how busy all $(nproc) cores were."
        echo "Targets: egress <= 1.05x at every N; P2P p50 <= 1.2x, p99 <= 1.5x ideal at N=48."
    } | tee "$RAW/table.txt"

    jq -s --arg date "$(date -u +%FT%TZ)" --arg wharf "$WHARF_SRC" --argjson bytes "$IMG_BYTES" \
        --arg layers "$LAYERS_MIB" --arg commit "$(git describe --always --dirty 2>/dev/null || echo unknown)" \
        --arg build "$WHARF_BUILD" --arg piece "${P2P_PIECE:-4M}" \
        --arg node_args "${P2P_NODE_ARGS:-}" --arg sched_args "${P2P_SCHED_ARGS:-}" --arg sysctls "${NET_SYSCTLS:-}" \
        --argjson cores "$(nproc)" --arg kernel "$(uname -r)" --argjson direct_max "$DIRECT_MAX_N" \
        '{date: $date, tree: $commit, wharf: $wharf, wharf_build: $build, kernel: $kernel, cores: $cores,
          image_bytes: $bytes, layers_mib: ($layers | split(" ") | map(tonumber)), piece: $piece,
          node_args: $node_args, scheduler_args: $sched_args, sysctls: $sysctls,
          direct_max_n: $direct_max, shaping: "tc tbf on both ends of every host link, burst 4 ms; switch port queue \(env.NET_SWITCH_QUEUE_MS // "50") ms, host queue 400 ms (at least 1 MiB); MTU \(env.NET_MTU // "1500")",
          results: .}' "$RAW/results.jsonl" >"$OUT_DIR/p2p.json"
    log "results: $OUT_DIR/p2p.json; logs: $RAW"
    ((FAILURES == 0)) || die "$FAILURES node pulls were incomplete (see $RAW/*/failures)"
}

main "$@"

# shellcheck shell=bash disable=SC2034 # sets variables for the sourcing scripts
# The network-namespace harness of the P2P end-to-end test (tests/e2e/p2p.sh) and benchmark
# (bench/p2p.sh). Sourced, never run; defines functions and nothing else until net_init.
#
# The network: one "switch" namespace holding a Linux bridge, and one namespace per host
# (origin, scheduler, nodes), each joined to the bridge by a veth pair created from inside
# the switch namespace (so the root namespace never sees an interface, an address or a
# firewall rule of ours). Addresses come from 198.18.0.0/15 only, on one /16 segment:
#   198.18.0.2  origin (`wharf serve`)       198.18.0.3  scheduler (`wharf scheduler`)
#   198.18.1.N  node N (N = 1..250, then 198.18.2.x, ...)
# No namespace has a default route: a packet for anywhere else fails at once.
#
# Bandwidth: a token bucket (`tc tbf`; this kernel has no netem) on both ends of each host's
# veth: the host's end limits what it uploads, the switch's end what it downloads. Burst is
# 4 ms of traffic (at least 8 KiB). The switch's queue holds 50 ms (~125 KB at 20 Mbit/s;
# NET_SWITCH_QUEUE_MS sets it):
# a switch port drops what does not fit, and TCP recovers as from any network loss. The
# host's own queue is larger (400 ms, at least 1 MiB), as a NIC's queue of 1000 frames is:
# a packet the sender's own qdisc drops is a local transmit failure, and with a small queue
# shared by dozens of flows (an origin serving 16 nodes' downloads at once) the kernel soon
# aborts the starved connections with a reset (TcpExtTCPAbortOnTimeout, TCPRetransFail) —
# an artifact of the emulation, not of anything under test.
#
# Frames: MTU 1500 unless NET_MTU says otherwise (9000: jumbo frames, as many datacenter
# networks run; a sixth of the packets for the kernel to switch and shape, which is most of
# the CPU an emulated 48-node network costs on a small machine).
#
# NET_SYSCTLS ("key=v1,v2 ...", commas for spaces) sets sysctls in every host's namespace, for experiments
# (net.ipv4.tcp_rmem=4096,49152,49152). A namespace may only pick a congestion control the root one allows.
#
# Names carry a per-run tag (NET_TAG, default wp<pid>), so a run never collides with a
# leftover of a crashed one: namespaces are "<tag>-sw", "<tag>-origin", "<tag>-n7", ...
#
#   net_init DIR                 start; DIR receives every process's stdout/stderr
#   net_switch                   the switch namespace and its bridge
#   net_host NAME IP [MBIT]      a host namespace on the bridge, shaped if MBIT is given
#   net_shape NAME MBIT|none     (re)shape both ends of a host's link
#   net_exec NAME CMD...         run CMD inside host NAME's namespace (foreground)
#   net_start NAME LABEL CMD...  run CMD in the background inside NAME; DIR/LABEL.out and
#                                DIR/LABEL.log get its stdout and stderr; sets NET_PID
#   net_wait_line LABEL REGEX    wait for a line of DIR/LABEL.out matching REGEX (with one
#                                capture group); sets NET_MATCH to the group
#   net_stop PID                 stop one process we started (TERM, then KILL after 10 s)
#   net_cpu_secs PID...          CPU seconds (user + system) the processes used so far
#   net_tx_bytes NAME            bytes sent on host NAME's interface (wire level)
#   net_tcp_counters NAME        TCP aborts, local retransmit failures, retransmissions
#   net_sample_start FILE [SECS] / net_sample_stop   sample every link's byte counters
#   net_utilization FILE ...     per-bucket link utilization from such samples
#   net_cleanup                  stop every process we started, newest first, then delete
#                                every namespace we made (hosts, then the switch)
#
# wharf on top of it (needs WHARF, the binary; P2P_TOKEN, the cluster token):
#   p2p_origin NAME IP ROOT      `wharf serve` on IP; sets ORIGIN_URL (http://IP:PORT)
#   p2p_scheduler NAME IP        `wharf scheduler` on IP; sets SCHED_URL, SCHED_PID
#   p2p_node NAME IP ROOT [ARGS] `wharf node` in NAME with mirror and peer API on IP;
#                                sets NODE_MIRROR[NAME], NODE_PEER[NAME], NODE_PID[NAME]
#   p2p_node_start / p2p_node_wait  the same in two halves, to start many nodes at once
#   p2p_make_image DIR TAG MIB...   an OCI layout with one random tar+gzip layer per MIB
#   p2p_push_image NAME LAYOUT REPO TAG ORIGIN_URL   curl it into a registry from host NAME
#   p2p_pull_all REPO TAG SAVE OUT NAME=BASE_URL...   every host pulls the image at once
#   p2p_pull_check OUT NAME / p2p_pull_secs OUT NAME  did it get every blob; how long it took
#   p2p_metric NAME URL METRIC [LABEL]   a summed counter from a /metrics page
#   node_ip N                    the address of node N

# ---------------------------------------------------------------------------------------
# Namespaces and links
# ---------------------------------------------------------------------------------------

net_init() {
    NET_DIR=$1
    NET_TAG=${NET_TAG:-wp$$}
    NET_SW=$NET_TAG-sw
    NET_MAIN_PID=$BASHPID
    NET_NS=()   # namespaces we created, in order
    NET_PIDS=() # processes we started, in order
    NET_NLINKS=0
    declare -gA NET_IP=() NET_PORT=() NODE_MIRROR=() NODE_PEER=() NODE_PID=()
    mkdir -p "$NET_DIR"
    # No proxy from the environment may see 198.18 traffic (curl and wharf's reqwest
    # both honour these variables).
    export NO_PROXY='*' no_proxy='*'
    unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
    if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
        echo "ip and tc (iproute2) are required" >&2
        return 1
    fi
}

net_switch() {
    ip netns add "$NET_SW"
    NET_NS+=("$NET_SW")
    ip -n "$NET_SW" link set lo up
    # No STP: ports forward as soon as they are up.
    ip -n "$NET_SW" link add br0 type bridge stp_state 0
    ip -n "$NET_SW" link set br0 up
}

net_host() {
    local name=$1 ip=$2 mbit=${3:-none} ns=$NET_TAG-$1 port
    port=p$NET_NLINKS
    NET_NLINKS=$((NET_NLINKS + 1))
    ip netns add "$ns"
    NET_NS+=("$ns")
    ip -n "$ns" link set lo up
    if [[ -n ${NET_SYSCTLS:-} ]]; then
        local kv
        for kv in $NET_SYSCTLS; do ip netns exec "$ns" sysctl -qw "${kv//,/ }"; done
    fi
    # Both ends are made from the switch namespace: the pair never exists in the root one.
    ip -n "$NET_SW" link add "$port" mtu "${NET_MTU:-1500}" type veth peer name eth0 mtu "${NET_MTU:-1500}" netns "$ns"
    ip -n "$NET_SW" link set "$port" master br0
    ip -n "$NET_SW" link set "$port" up
    ip -n "$ns" addr add "$ip/16" dev eth0
    ip -n "$ns" link set eth0 up
    NET_IP[$name]=$ip
    NET_PORT[$name]=$port
    net_shape "$name" "$mbit"
}

# net_static_neighbors: every host knows every other host's MAC address for good (no ARP).
# On this emulated switch an ARP request is flooded into every port's shaped queue and waits
# (or is dropped) behind whole seconds of data, as is its reply: a new connection then stalls
# for seconds, or fails with EHOSTUNREACH, for a reason no real switch fabric has. Call it after
# the last net_host.
net_static_neighbors() {
    local name ns batch
    declare -A mac
    for name in "${!NET_IP[@]}"; do
        mac[$name]=$(ip -n "$NET_TAG-$name" -j link show eth0 | jq -r '.[0].address')
    done
    for name in "${!NET_IP[@]}"; do
        ns=$NET_TAG-$name
        batch=""
        for other in "${!NET_IP[@]}"; do
            [[ $other == "$name" ]] && continue
            batch+="neigh replace ${NET_IP[$other]} lladdr ${mac[$other]} dev eth0 nud permanent"$'\n'
        done
        printf '%s' "$batch" | ip -n "$ns" -batch - || return 1
    done
}

# net_shape NAME MBIT|none: tbf on the host's eth0 (its upload) and on the switch's port
# (its download), or no shaping at all.
net_shape() {
    local name=$1 mbit=$2 ns=$NET_TAG-$1 port=${NET_PORT[$1]} burst limit
    if [[ "$mbit" == none ]]; then
        tc -n "$ns" qdisc del dev eth0 root 2>/dev/null || true
        tc -n "$NET_SW" qdisc del dev "$port" root 2>/dev/null || true
        return 0
    fi
    # 4 ms of traffic, at least 8 KiB and two full-size frames (tbf drops a frame larger than its burst).
    burst=$((mbit * 1000000 * 4 / 8 / 1000))
    ((burst >= 8192)) || burst=8192
    ((burst >= 2 * (${NET_MTU:-1500} + 14))) || burst=$((2 * (${NET_MTU:-1500} + 14)))
    # The host's queue: 400 ms of traffic, at least 1 MiB (see the top of this file).
    limit=$((mbit * 1000000 * ${NET_HOST_QUEUE_MS:-400} / 8 / 1000))
    ((limit >= ${NET_HOST_QUEUE_MIN:-1048576})) || limit=${NET_HOST_QUEUE_MIN:-1048576}
    tc -n "$ns" qdisc replace dev eth0 root tbf rate "${mbit}mbit" burst "$burst" limit "$limit"
    tc -n "$NET_SW" qdisc replace dev "$port" root tbf rate "${mbit}mbit" burst "$burst" latency "${NET_SWITCH_QUEUE_MS:-50}ms"
}

net_exec() {
    local ns=$NET_TAG-$1
    shift
    ip netns exec "$ns" "$@"
}

net_start() {
    local ns=$NET_TAG-$1 label=$2
    shift 2
    : >"$NET_DIR/$label.out"
    ip netns exec "$ns" "$@" >"$NET_DIR/$label.out" 2>"$NET_DIR/$label.log" &
    NET_PID=$! # `ip netns exec` execs the command: this is its PID
    NET_PIDS+=("$NET_PID")
}

# net_wait_line LABEL REGEX [SECONDS]: REGEX is an extended regex with one capture group,
# matched against each line of DIR/LABEL.out; NET_MATCH is the group. Fails (after
# printing the log's tail) if the process printed nothing matching in time.
net_wait_line() {
    local label=$1 re=$2 secs=${3:-20} i line
    for ((i = 0; i < secs * 10; i++)); do
        while IFS= read -r line; do
            if [[ "$line" =~ $re ]]; then
                NET_MATCH=${BASH_REMATCH[1]}
                return 0
            fi
        done <"$NET_DIR/$label.out"
        sleep 0.1
    done
    echo "$label printed no line matching /$re/ within $secs s; last lines of $label.log:" >&2
    tail -n 20 "$NET_DIR/$label.log" >&2
    return 1
}

net_stop() {
    local pid=$1 i p kept=()
    if kill -TERM "$pid" 2>/dev/null; then
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "warning: pid $pid ignored SIGTERM for 10 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    for p in "${NET_PIDS[@]}"; do
        [[ "$p" == "$pid" ]] || kept+=("$p")
    done
    NET_PIDS=("${kept[@]}")
}

# net_cpu_secs PID...: user + system CPU seconds of the (still running) processes.
net_cpu_secs() {
    local pid ticks=0 stat f hz
    hz=$(getconf CLK_TCK)
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        # After the command name (which may hold spaces): fields 3...; utime and stime are
        # fields 14 and 15, so the 12th and 13th of these.
        read -r -a f <<<"${stat##*) }"
        ticks=$((ticks + f[11] + f[12]))
    done
    awk -v t="$ticks" -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }'
}

# net_tcp_counters NAME: "aborts retransfail retranssegs" of host NAME's TCP stack so far:
# connections the kernel reset after retransmitting in vain (TcpExtTCPAbortOnTimeout),
# retransmissions its own qdisc refused (TcpExtTCPRetransFail), segments retransmitted.
net_tcp_counters() {
    ip netns exec "$NET_TAG-$1" nstat -asz TcpExtTCPAbortOnTimeout TcpExtTCPRetransFail TcpRetransSegs 2>/dev/null |
        awk '{ v[$1] = $2 } END { printf "%d %d %d\n", v["TcpExtTCPAbortOnTimeout"], v["TcpExtTCPRetransFail"], v["TcpRetransSegs"] }'
}

net_tx_bytes() {
    ip -n "$NET_TAG-$1" -s -j link show dev eth0 | jq '.[0].stats64.tx.bytes'
}

# net_sample_start FILE [SECONDS]: every SECONDS (default 1), one line in FILE: the time
# (epoch seconds with microseconds), then "PORT:RX:TX" for every switch port, the byte
# counters of the switch's end of each host's link (RX: what the host uploaded, TX: what it
# downloaded). Read inside the switch namespace by one shell loop: no process per sample
# but `sleep`. NET_PORT maps host names to ports. net_sample_stop ends it.
net_sample_start() {
    local file=$1 every=${2:-1}
    # shellcheck disable=SC2016 # expanded by the inner bash
    ip netns exec "$NET_SW" bash -c '
        while :; do
            line=$EPOCHREALTIME
            for d in /sys/class/net/p[0-9]*; do
                read -r rx <"$d/statistics/rx_bytes"
                read -r tx <"$d/statistics/tx_bytes"
                line+=" ${d##*/}:$rx:$tx"
            done
            echo "$line"
            sleep "$1"
        done' sample "$every" >"$file" 2>/dev/null &
    NET_SAMPLER_PID=$!
    NET_PIDS+=("$NET_SAMPLER_PID")
}

net_sample_stop() {
    [[ -n "${NET_SAMPLER_PID:-}" ]] && net_stop "$NET_SAMPLER_PID"
    NET_SAMPLER_PID=
}

# net_utilization FILE MBIT BUCKET_SECS T0_NS PORT_OF_ORIGIN NODE_PORTS...: from a sample
# file, per BUCKET_SECS from T0: the origin's upload, and the nodes' mean upload and mean
# download, each in % of MBIT. Prints three lines: "origin_up P P ...", "nodes_up ...",
# "nodes_down ...".
net_utilization() {
    local file=$1 mbit=$2 bucket=$3 t0=$4 origin=$5
    shift 5
    awk -v rate="$mbit" -v b="$bucket" -v t0="$t0" -v origin="$origin" -v nodes="$*" '
        BEGIN { n = split(nodes, np, " "); for (i = 1; i <= n; i++) isnode[np[i]] = 1; cap = rate * 1e6 / 8 }
        {
            t = $1 - t0 / 1e9
            for (i = 2; i <= NF; i++) {
                split($i, f, ":"); p = f[1]
                if ((p in lastrx) && t >= 0) {
                    k = int(t / b)
                    up = f[2] - lastrx[p]; down = f[3] - lasttx[p]
                    if (p == origin) oup[k] += up
                    if (p in isnode) { nup[k] += up; ndown[k] += down }
                    if (k > kmax) kmax = k
                }
                lastrx[p] = f[2]; lasttx[p] = f[3]
            }
        }
        END {
            printf "origin_up"; for (k = 0; k <= kmax; k++) printf " %.0f", 100 * oup[k] / (cap * b); print ""
            printf "nodes_up"; for (k = 0; k <= kmax; k++) printf " %.0f", 100 * nup[k] / (n * cap * b); print ""
            printf "nodes_down"; for (k = 0; k <= kmax; k++) printf " %.0f", 100 * ndown[k] / (n * cap * b); print ""
        }' "$file"
}

net_cleanup() {
    [[ "${NET_MAIN_PID:-}" == "$BASHPID" ]] || return 0
    local i
    for ((i = ${#NET_PIDS[@]} - 1; i >= 0; i--)); do
        net_stop "${NET_PIDS[i]}"
    done
    # A host namespace takes its veth pair with it; the switch goes last.
    for ((i = ${#NET_NS[@]} - 1; i >= 0; i--)); do
        ip netns del "${NET_NS[i]}" 2>/dev/null || echo "warning: could not delete netns ${NET_NS[i]}" >&2
    done
    NET_NS=()
}

node_ip() { echo "198.18.$((1 + ($1 - 1) / 250)).$((1 + ($1 - 1) % 250))"; }

# ---------------------------------------------------------------------------------------
# wharf in the namespaces
# ---------------------------------------------------------------------------------------

# The environment a wharf process gets: nothing from the caller's that could change what
# is tested (config file, log filter, token). `env` execs wharf: the PID stays the same.
P2P_ENV=(env -u WHARF_CONFIG -u WHARF_LISTEN -u WHARF_ROOT -u RUST_LOG -u WHARF_P2P_TOKEN NO_COLOR=1)

p2p_origin() {
    local name=$1 ip=$2 root=$3
    net_start "$name" "$name" "${P2P_ENV[@]}" "$WHARF" serve --listen "$ip:0" --root "$root" \
        --log "${P2P_ORIGIN_LOG:-info,wharf_registry=debug}"
    ORIGIN_PID=$NET_PID
    net_wait_line "$name" '^wharf serve: listening on (http://[0-9.]+:[0-9]+)$' || return 1
    ORIGIN_URL=$NET_MATCH
}

p2p_scheduler() {
    local name=$1 ip=$2
    net_start "$name" "$name" "${P2P_ENV[@]}" "$WHARF" scheduler --listen "$ip:0" --token "$P2P_TOKEN" \
        --log "${P2P_SCHED_LOG:-info}" ${P2P_SCHED_ARGS:-}
    SCHED_PID=$NET_PID
    net_wait_line "$name" '^wharf scheduler: listening on (http://[0-9.]+:[0-9]+)$' || return 1
    SCHED_URL=$NET_MATCH
}

# p2p_node_start NAME IP ROOT [EXTRA_ARGS...]: needs SCHED_URL and ORIGIN_URL. The mirror
# and the peer API listen on the namespace's own address; the advertised address is left
# to wharf to find (the route to the scheduler).
p2p_node_start() {
    local name=$1 ip=$2 root=$3
    shift 3
    net_start "$name" "$name" "${P2P_ENV[@]}" "$WHARF" node --root "$root" \
        --listen "$ip:0" --peer-listen "$ip:0" \
        --scheduler "$SCHED_URL" --upstream "$ORIGIN_URL" \
        --token "$P2P_TOKEN" --piece-size "${P2P_PIECE:-4M}" --log "${P2P_NODE_LOG:-info}" ${P2P_NODE_ARGS:-} "$@"
    NODE_PID[$name]=$NET_PID
}

# p2p_node_wait NAME: its two address lines.
p2p_node_wait() {
    local name=$1
    net_wait_line "$name" '^wharf node: mirror on (http://[0-9.]+:[0-9]+)$' || return 1
    NODE_MIRROR[$name]=$NET_MATCH
    net_wait_line "$name" '^wharf node: peer (http://[0-9.]+:[0-9]+) on ' || return 1
    NODE_PEER[$name]=$NET_MATCH
}

p2p_node() {
    p2p_node_start "$@" && p2p_node_wait "$1"
}

# p2p_metric NAME URL METRIC [LABEL]: the sum of METRIC's samples whose labels contain
# LABEL, from URL/metrics fetched inside host NAME (0 if none).
p2p_metric() {
    net_exec "$1" curl -sS --fail --max-time 10 "$2/metrics" |
        awk -v m="$3" -v l="${4:-}" '
            $1 == m || index($1, m "{") == 1 { if (l == "" || index($1, l) > 0) s += $NF }
            END { printf "%.0f\n", s }'
}

# ---------------------------------------------------------------------------------------
# The image: an OCI layout written by hand (as tests/e2e/skopeo.sh does), pushed with curl
# ---------------------------------------------------------------------------------------

P2P_OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
P2P_OCI_CONFIG=application/vnd.oci.image.config.v1+json
P2P_OCI_LAYER=application/vnd.oci.image.layer.v1.tar+gzip
P2P_OCI_INDEX=application/vnd.oci.image.index.v1+json

p2p_sha256() { openssl dgst -sha256 -r "$1" | cut -d' ' -f1; }

# p2p_add_blob LAYOUT MEDIA_TYPE FILE: moves FILE to its digest's place; sets P2P_DESC.
p2p_add_blob() {
    local layout=$1 mt=$2 file=$3 hex size
    hex=$(p2p_sha256 "$file")
    size=$(stat -c %s "$file")
    mv "$file" "$layout/blobs/sha256/$hex"
    P2P_DESC=$(jq -cn --arg m "$mt" --arg d "sha256:$hex" --argjson s "$size" '{mediaType: $m, digest: $d, size: $s}')
}

# p2p_make_image LAYOUT TAG MIB...: one layer per MIB, each a tar of one file
# /data/layerK.bin of MIB MiB of random bytes (kept as LAYOUT.files/layerK.bin, for
# content checks), gzip -1 (random data does not shrink). Sets IMG_BLOBS ("digest size"
# lines, config first), IMG_BYTES (their sum), IMG_CONFIG (config digest, = the Docker
# image ID), IMG_MANIFEST (file) and IMG_MANIFEST_DIGEST.
p2p_make_image() {
    local layout=$1 tag=$2 k=0 mib src layers='[]' diff_ids='[]'
    shift 2
    mkdir -p "$layout/blobs/sha256" "$layout.files"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
    for mib in "$@"; do
        k=$((k + 1))
        src=$layout.files/src$k
        mkdir -p "$src/data"
        head -c $((mib * 1024 * 1024)) /dev/urandom >"$src/data/layer$k.bin"
        tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$src" -cf "$layout.files/layer.tar" .
        diff_ids=$(jq -c --arg d "sha256:$(p2p_sha256 "$layout.files/layer.tar")" '. + [$d]' <<<"$diff_ids")
        gzip -1 -n -c "$layout.files/layer.tar" >"$layout.files/layer.tar.gz"
        rm "$layout.files/layer.tar"
        mv "$src/data/layer$k.bin" "$layout.files/layer$k.bin"
        rm -rf "$src"
        p2p_add_blob "$layout" "$P2P_OCI_LAYER" "$layout.files/layer.tar.gz"
        layers=$(jq -c --argjson d "$P2P_DESC" '. + [$d]' <<<"$layers")
    done
    jq -cn --argjson diff_ids "$diff_ids" '{
        architecture: "amd64", os: "linux",
        config: {Env: ["PATH=/bin"], Cmd: ["/bin/true"]},
        rootfs: {type: "layers", diff_ids: $diff_ids}
    }' >"$layout.files/config.json"
    p2p_add_blob "$layout" "$P2P_OCI_CONFIG" "$layout.files/config.json"
    local config=$P2P_DESC
    jq -cn --arg mt "$P2P_OCI_MANIFEST" --argjson config "$config" --argjson layers "$layers" \
        '{schemaVersion: 2, mediaType: $mt, config: $config, layers: $layers}' >"$layout.files/manifest.json"
    p2p_add_blob "$layout" "$P2P_OCI_MANIFEST" "$layout.files/manifest.json"
    jq -n --arg mt "$P2P_OCI_INDEX" --argjson d "$P2P_DESC" --arg tag "$tag" '{
        schemaVersion: 2, mediaType: $mt,
        manifests: [$d + {annotations: {"org.opencontainers.image.ref.name": $tag}}]
    }' >"$layout/index.json"
    IMG_MANIFEST_DIGEST=$(jq -r .digest <<<"$P2P_DESC")
    IMG_MANIFEST=$layout/blobs/sha256/${IMG_MANIFEST_DIGEST#sha256:}
    IMG_CONFIG=$(jq -r .digest <<<"$config")
    IMG_BLOBS=$(jq -r '.config, .layers[] | "\(.digest) \(.size)"' "$IMG_MANIFEST")
    IMG_BYTES=$(awk '{ s += $2 } END { print s }' <<<"$IMG_BLOBS")
}

# p2p_push_image NAME LAYOUT REPO TAG REGISTRY_URL: monolithic POST ?digest= per blob, then
# the manifest PUT, with curl run inside host NAME.
p2p_push_image() {
    local name=$1 layout=$2 repo=$3 tag=$4 url=$5 d size code
    while read -r d size; do
        code=$(net_exec "$name" curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'Expect:' \
            -H 'Content-Type: application/octet-stream' --data-binary "@$layout/blobs/sha256/${d#sha256:}" \
            "$url/v2/$repo/blobs/uploads/?digest=$d")
        [[ "$code" == 201 ]] || {
            echo "push of blob $d ($size bytes) to $url/v2/$repo answered $code" >&2
            return 1
        }
    done <<<"$IMG_BLOBS"
    code=$(net_exec "$name" curl -sS -o /dev/null -w '%{http_code}' -X PUT \
        -H "Content-Type: $P2P_OCI_MANIFEST" --data-binary "@$IMG_MANIFEST" "$url/v2/$repo/manifests/$tag")
    [[ "$code" == 201 ]] || {
        echo "push of manifest $repo:$tag to $url answered $code" >&2
        return 1
    }
}

# ---------------------------------------------------------------------------------------
# Pulling from many hosts at once
# ---------------------------------------------------------------------------------------

# p2p_pull_all REPO TAG SAVE OUT NAME=BASE_URL...: every host NAME pulls, from BASE_URL
# (its node's mirror, or the origin), the manifest REPO:TAG and then every blob of
# IMG_BLOBS in parallel (one curl, a connection per blob), all hosts released at the same
# instant. SAVE=1 keeps the blobs as OUT/NAME/<hex>, SAVE=0 sends them to /dev/null.
# Writes OUT/NAME.res: "<digest> <http code> <bytes>" per blob, and a last line
# "end <epoch ns>"; sets PULL_T0 (epoch ns of the release). Returns when every host is done,
# or P2P_PULL_TIMEOUT seconds (default 1200) after the release.
p2p_pull_all() {
    local repo=$1 tag=$2 save=$3 out=$4 spec name base d size pids=() n=0
    shift 4
    mkdir -p "$out"
    rm -f "$out/go"
    mkfifo "$out/go"
    # Held open for writing, so readers never block in open() and no release is missed.
    exec {P2P_GO_FD}<>"$out/go"
    for spec in "$@"; do
        name=${spec%%=*}
        base=${spec#*=}
        : >"$out/$name.cfg"
        while read -r d size; do
            if [[ "$save" == 1 ]]; then
                mkdir -p "$out/$name"
                printf 'url = "%s/v2/%s/blobs/%s"\noutput = "%s/%s/%s"\n' "$base" "$repo" "$d" "$out" "$name" "${d#sha256:}"
            else
                printf 'url = "%s/v2/%s/blobs/%s"\noutput = "/dev/null"\n' "$base" "$repo" "$d"
            fi >>"$out/$name.cfg"
        done <<<"$IMG_BLOBS"
        # Inside the namespace before the release: only curl's own start remains after it.
        # shellcheck disable=SC2016 # expanded by the inner bash
        net_exec "$name" bash -c '
            read -r _ <"$1"
            curl -sS -o /dev/null --max-time "$7" \
                -H "Accept: application/vnd.oci.image.manifest.v1+json" "$2/v2/$3/manifests/$4"
            curl -sS --no-progress-meter --parallel --parallel-immediate --parallel-max 64 --max-time "$7" \
                -w "%{url_effective} %{http_code} %{size_download}\n" -K "$5" |
                sed -E "s|^.*/blobs/(sha256:[0-9a-f]+) |\1 |" >"$6"
            echo "end $(date +%s%N)" >>"$6"
        ' pull "$out/go" "$base" "$repo" "$tag" "$out/$name.cfg" "$out/$name.res" \
            "${P2P_PULL_TIMEOUT:-1200}" >"$out/$name.err" 2>&1 &
        pids+=($!)
        n=$((n + 1))
    done
    sleep 0.5 # every reader is at its `read` by now (a late one would still find its line)
    PULL_T0=$(date +%s%N)
    local i
    for ((i = 0; i < n; i++)); do echo go >&"$P2P_GO_FD"; done
    for i in "${pids[@]}"; do wait "$i" || true; done
    exec {P2P_GO_FD}>&-
    rm -f "$out/go"
}

# p2p_pull_check OUT NAME: 0 if OUT/NAME.res shows every blob of IMG_BLOBS with 200 and its
# size; else prints what is wrong and returns 1.
p2p_pull_check() {
    local out=$1 name=$2 d size code got bad=0
    while read -r d size; do
        read -r code got < <(awk -v d="$d" '$1 == d { print $2, $3 }' "$out/$name.res")
        if [[ "${code:-}" != 200 || "${got:-}" != "$size" ]]; then
            echo "$name: blob $d: HTTP ${code:-none}, ${got:-0} of $size bytes" >&2
            bad=1
        fi
    done <<<"$IMG_BLOBS"
    grep -q '^end ' "$out/$name.res" || bad=1
    return $bad
}

# p2p_pull_secs OUT NAME: seconds from PULL_T0 to the end of NAME's pull.
p2p_pull_secs() {
    awk -v t0="$PULL_T0" '$1 == "end" { printf "%.3f\n", ($2 - t0) / 1e9 }' "$1/$2.res"
}

#!/usr/bin/env bash
# bench/mirror.sh: wharf's pull-through mirror vs CNCF distribution 2.8 in proxy mode
# (Debian's `docker-registry`), side by side on this machine, in front of the same origin.
#
# Usage:
#   bench/mirror.sh                          # uses ./target/release/wharf
#   WHARF=/path/to/wharf bench/mirror.sh
#
# Knobs (environment):
#   WHARF         wharf binary (origin and mirror)      (default ./target/release/wharf)
#   DISTRIBUTION  reference registry binary             (default /usr/bin/docker-registry)
#   LAYERS_MIB    layer sizes in MiB, space-separated    (default "128 64 48 16": 256 MiB)
#   CLIENTS       concurrent cold pulls for the egress test (default 8)
#   COLD_RUNS     cold single-client pulls per mirror, each on fresh storage (default 4)
#   WARM_RUNS     warm pulls after each cold one        (default 3)
#   CONCURRENT_RUNS  concurrent-pull runs per mirror, each on fresh storage (default 2)
#   DATA_DIR      where the benchmark image's blobs are generated once and kept across runs;
#                 must be a real disk, not tmpfs         (default bench/out/mirror-data)
#   BENCH_TMP     parent of the scratch dir (mirror storage, downloads); real disk
#                 (default bench/out)
#   OUT_DIR       results JSON and raw logs             (default bench/out, gitignored)
#
# The origin is a `wharf serve` holding one OCI image (a config and LAYERS_MIB layers of
# random bytes), pushed with curl (monolithic POST ?digest= uploads and a manifest PUT).
# A "pull" is what a client does: GET the manifest by tag, then GET the config and all
# layers in parallel, one curl per blob, into files. Downloads are checked against the
# pushed bytes after every timed phase (untimed).
#
# For each mirror (wharf: `wharf serve --upstream http://ORIGIN`; distribution:
# `proxy: remoteurl: http://ORIGIN`, filesystem storage):
#   cold pull     one client, fresh (empty) mirror storage: best and median of COLD_RUNS,
#                 and the origin egress it caused (worst run)
#   warm pull     the same pull again against the now-filled mirror, WARM_RUNS after each
#                 cold pull: best and median
#   concurrent    CLIENTS clients pulling at once from a fresh mirror: wall time until the
#                 last finishes, and the origin's egress, counted from the origin's request
#                 log (GET lines for blobs with status 200, times the blob's size), as a
#                 multiple of the image size. The target is 1.0x for wharf (one upstream
#                 fetch per blob whatever the number of clients) against ~CLIENTS x for
#                 distribution, which streams every concurrent miss from upstream.
#
# Caveats (printed with the results): the page cache is not dropped, so the origin serves
# from memory; 2 cores are shared by origin, mirror and all curls; the origin's log line
# is written when the response starts, so an aborted download would still count in full.
set -euo pipefail

for var in WHARF DISTRIBUTION OUT_DIR BENCH_TMP DATA_DIR; do
    if [[ -n ${!var:-} ]]; then printf -v "$var" '%s' "$(realpath -m "${!var}")"; fi
done
cd "$(dirname "$0")/.."

WHARF=${WHARF:-./target/release/wharf}
DISTRIBUTION=${DISTRIBUTION:-/usr/bin/docker-registry}
LAYERS_MIB=${LAYERS_MIB:-"128 64 48 16"}
CLIENTS=${CLIENTS:-8}
COLD_RUNS=${COLD_RUNS:-4}
WARM_RUNS=${WARM_RUNS:-3}
CONCURRENT_RUNS=${CONCURRENT_RUNS:-2}
OUT_DIR=${OUT_DIR:-bench/out}
DATA_DIR=${DATA_DIR:-$OUT_DIR/mirror-data}
BENCH_TMP=${BENCH_TMP:-$OUT_DIR}

REPO=bench/mirror
MANIFEST_TYPE=application/vnd.oci.image.manifest.v1+json
ACCEPT="$MANIFEST_TYPE, application/vnd.docker.distribution.manifest.v2+json"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] FATAL: %s\n' "$*" >&2; exit 1; }

# A proxy from the environment must never see loopback traffic.
export NO_PROXY='*' no_proxy='*'
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy

# ---------------------------------------------------------------------------------------
# Process bookkeeping: every server this script starts is stopped by PID (exit trap, or
# stop_server between phases); the scratch dir (mirror storage, downloads) is removed.
# ---------------------------------------------------------------------------------------
PIDS=()
SCRATCH=""
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ -n $SCRATCH && -d $SCRATCH ]]; then rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# forget_pid PID: remove a stopped server from PIDS.
forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------------------------------
# Preflight and data
# ---------------------------------------------------------------------------------------
preflight() {
    [[ -x $WHARF ]] || die "wharf binary not found at $WHARF (build with cargo build --release, or set WHARF=)"
    WHARF=$(realpath "$WHARF")
    [[ -x $DISTRIBUTION ]] || die "distribution binary not found at $DISTRIBUTION (apt-get install docker-registry)"
    local tool
    for tool in curl python3 openssl awk cmp; do
        command -v "$tool" >/dev/null || die "$tool is required"
    done
    [[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be a positive integer, got '$CLIENTS'"
    mkdir -p "$OUT_DIR" "$DATA_DIR" "$BENCH_TMP"
    OUT_DIR=$(realpath "$OUT_DIR")
    RAW="$OUT_DIR/mirror-raw"
    rm -rf "$RAW"
    mkdir -p "$RAW"
    SCRATCH=$(mktemp -d "$(realpath "$BENCH_TMP")/wharf-mirror-bench.XXXXXX")
    local fstype
    fstype=$(stat -f -c %T "$SCRATCH")
    [[ $fstype != tmpfs ]] || die "BENCH_TMP=$BENCH_TMP is tmpfs; point it at a real disk"
    [[ $(stat -f -c %T "$DATA_DIR") != tmpfs ]] || die "DATA_DIR=$DATA_DIR is tmpfs; point it at a real disk"
    local total_mib=0 m
    for m in $LAYERS_MIB; do total_mib=$((total_mib + m)); done
    # Each concurrent phase holds CLIENTS downloads plus a full mirror copy.
    local need_kib=$(((total_mib * (CLIENTS + 4) + 512) * 1024))
    local avail_kib
    avail_kib=$(df -Pk "$SCRATCH" | awk 'NR==2 {print $4}')
    ((avail_kib > need_kib)) || die "need ~$((need_kib / 1024)) MiB free under $BENCH_TMP, have $((avail_kib / 1024))"
    log "scratch $SCRATCH ($fstype), data $DATA_DIR"
}

sha256_of() { openssl dgst -sha256 -r "$1" | awk '{print "sha256:" $1}'; }

# make_image: random layers (generated once, kept in DATA_DIR keyed by size), a config
# and a manifest. Sets BLOBS (config first, then layers: "digest size file" lines),
# IMAGE_BYTES (sum of blob sizes), MANIFEST_FILE, MANIFEST_DIGEST.
make_image() {
    local m i=0 f layers_json="" diff_ids="" d s
    BLOBS=""
    LAYER_LINES=""
    IMAGE_BYTES=0
    for m in $LAYERS_MIB; do
        i=$((i + 1))
        f="$DATA_DIR/layer$i-${m}MiB.bin"
        if [[ ! -s $f || $(stat -c %s "$f") != $((m * 1048576)) ]]; then
            log "generating $f"
            # openssl's CSPRNG in counter mode: random, incompressible, far faster than /dev/urandom.
            openssl rand -out "$f.tmp" $((m * 1048576))
            mv "$f.tmp" "$f"
        fi
        d=$(sha256_of "$f")
        s=$(stat -c %s "$f")
        LAYER_LINES+="$d $s $f"$'\n'
        layers_json+="${layers_json:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$d\",\"size\":$s}"
        diff_ids+="${diff_ids:+,}\"$d\""
        IMAGE_BYTES=$((IMAGE_BYTES + s))
    done
    local cfg="$SCRATCH/config.json"
    printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/true"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
        "$diff_ids" >"$cfg"
    local cd cs
    cd=$(sha256_of "$cfg")
    cs=$(stat -c %s "$cfg")
    BLOBS="$cd $cs $cfg"$'\n'"$LAYER_LINES"
    BLOBS=${BLOBS%$'\n'}
    IMAGE_BYTES=$((IMAGE_BYTES + cs))
    MANIFEST_FILE="$SCRATCH/manifest.json"
    printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[%s]}' \
        "$MANIFEST_TYPE" "$cd" "$cs" "$layers_json" >"$MANIFEST_FILE"
    MANIFEST_DIGEST=$(sha256_of "$MANIFEST_FILE")
    NBLOBS=$(wc -l <<<"$BLOBS")
    log "image: $NBLOBS blobs, $IMAGE_BYTES bytes ($((IMAGE_BYTES / 1048576)) MiB), manifest $MANIFEST_DIGEST"
}

# ---------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # url name logfile
    for _ in $(seq 100); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "$1/v2/" || true) == 200 ]]; then return 0; fi
        sleep 0.1
    done
    die "$2 at $1 did not answer GET /v2/ with 200 within 10 s: $(tail -n 20 "$3" 2>/dev/null)"
}

# start_wharf NAME LOGFILTER ARGS... -> STARTED_PID, STARTED_URL
start_wharf() {
    local name=$1 filter=$2
    shift 2
    env -u WHARF_CONFIG -u WHARF_LISTEN -u WHARF_ROOT -u RUST_LOG NO_COLOR=1 \
        "$WHARF" serve --listen 127.0.0.1:0 --log "$filter" "$@" \
        >"$RAW/$name.stdout" 2>"$RAW/$name.log" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    local line=""
    for _ in $(seq 100); do
        line=$(grep -m1 'listening on' "$RAW/$name.stdout" 2>/dev/null || true)
        [[ -n $line ]] && break
        kill -0 "$STARTED_PID" 2>/dev/null || die "wharf $name exited: $(tail -n 20 "$RAW/$name.log")"
        sleep 0.1
    done
    [[ -n $line ]] || die "wharf $name did not report its address in 10 s: $(tail -n 20 "$RAW/$name.log")"
    STARTED_URL=${line##*listening on }
    wait_ready "$STARTED_URL" "wharf $name" "$RAW/$name.log"
}

# start_mirror WHO TAG: a mirror with empty storage -> MIRROR_PID, MIRROR_URL, MIRROR_LOG
start_mirror() {
    local who=$1 tag=$2 root="$SCRATCH/$1-$2"
    rm -rf "$root"
    MIRROR_LOG="$RAW/$who-$tag.log"
    if [[ $who == wharf ]]; then
        # Warnings only: no per-request logging on the mirror (distribution gets the same).
        start_wharf "$who-$tag" warn --root "$root" --upstream "$ORIGIN_URL"
        MIRROR_PID=$STARTED_PID MIRROR_URL=$STARTED_URL
    else
        local port cfg="$SCRATCH/distribution-$tag.yml"
        port=$(free_port)
        mkdir -p "$root"
        # inmemory blob descriptor cache, as in bench/registry.sh; access log off.
        cat >"$cfg" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $root
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
proxy:
  remoteurl: $ORIGIN_URL
EOF
        "$DISTRIBUTION" serve "$cfg" >"$RAW/$who-$tag.stdout" 2>"$MIRROR_LOG" &
        MIRROR_PID=$!
        PIDS+=("$MIRROR_PID")
        MIRROR_URL="http://127.0.0.1:$port"
        wait_ready "$MIRROR_URL" "distribution $tag" "$MIRROR_LOG"
    fi
}

stop_mirror() {
    stop_pid "$MIRROR_PID"
    forget_pid "$MIRROR_PID"
    rm -rf "$SCRATCH/$1-$2"
}

# push_origin: monolithic POST ?digest= for every blob, then the manifest PUT.
push_origin() {
    local d s f code
    while read -r d s f; do
        code=$(curl -sS -o "$SCRATCH/push.body" -w '%{http_code}' -X POST -H 'Expect:' \
            -H 'Content-Type: application/octet-stream' --data-binary @"$f" \
            "$ORIGIN_URL/v2/$REPO/blobs/uploads/?digest=$d")
        [[ $code == 201 ]] || die "origin: monolithic upload of $d -> $code: $(cat "$SCRATCH/push.body")"
    done <<<"$BLOBS"
    code=$(curl -sS -o "$SCRATCH/push.body" -w '%{http_code}' -X PUT -H "Content-Type: $MANIFEST_TYPE" \
        --data-binary @"$MANIFEST_FILE" "$ORIGIN_URL/v2/$REPO/manifests/v1")
    [[ $code == 201 ]] || die "origin: manifest PUT -> $code: $(cat "$SCRATCH/push.body")"
    log "origin: pushed $REPO:v1"
}

# ---------------------------------------------------------------------------------------
# Pulling
# ---------------------------------------------------------------------------------------

# pull BASE DIR: GET the manifest by tag, then every blob in parallel (one curl each), into
# DIR. Returns non-zero if any request failed; pull_errors DIR then tells which and why.
pull() {
    local base=$1 dir=$2 d s f pids=() p rc=0
    mkdir -p "$dir"
    curl -sS --fail-with-body -H "Accept: $ACCEPT" -o "$dir/manifest" -w '%{http_code} GET %{url_effective}\n' \
        "$base/v2/$REPO/manifests/v1" >"$dir/manifest.status" 2>"$dir/manifest.err" || return 1
    while read -r d s f; do
        curl -sS --fail-with-body -o "$dir/${d#sha256:}" -w '%{http_code} GET %{url_effective}\n' \
            "$base/v2/$REPO/blobs/$d" >"$dir/${d#sha256:}.status" 2>"$dir/${d#sha256:}.err" &
        pids+=($!)
    done <<<"$BLOBS"
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    return $rc
}

# pull_errors DIR: for every failed request of a pull, the request, status and response body.
pull_errors() {
    local err body
    for err in "$1"/*.err; do
        [[ -s $err ]] || continue
        body=${err%.err}
        printf '  %s -> %s; body: %s\n' "$(cat "${body}.status" 2>/dev/null)" "$(tr '\n' ' ' <"$err")" \
            "$(head -c 300 "$body" 2>/dev/null | tr '\n' ' ')"
    done
}

# verify DIR: the manifest and every blob are byte-identical to what was pushed.
verify() {
    local dir=$1 d s f
    cmp -s "$dir/manifest" "$MANIFEST_FILE" || { log "$dir: manifest differs: $(head -c 300 "$dir/manifest")"; return 1; }
    while read -r d s f; do
        cmp -s "$dir/${d#sha256:}" "$f" || {
            log "$dir: blob $d differs from the pushed one ($(stat -c %s "$dir/${d#sha256:}" 2>/dev/null || echo missing) bytes, want $s)"
            return 1
        }
    done <<<"$BLOBS"
}

now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

# timed_pull WHO BASE DIR -> seconds on stdout, or fails with evidence on stderr.
timed_pull() {
    local who=$1 base=$2 dir=$3 t0 secs
    rm -rf "$dir"
    t0=$(now)
    if ! pull "$base" "$dir"; then
        log "$who: pull from $base failed:"
        pull_errors "$dir" >&2
        return 1
    fi
    secs=$(secs_since "$t0")
    verify "$dir" || return 1
    rm -rf "$dir"
    echo "$secs"
}

# origin_mark: the origin log's current line count.
origin_mark() { wc -l <"$RAW/origin.log"; }

# origin_egress MARK -> "blob_bytes full_gets partial_gets manifest_reqs" for the origin's
# log lines after MARK. A full GET (200) of a blob counts its whole size; a 206 (a Range
# request, e.g. a resumed fetch) is counted apart, since its length is not in the log.
origin_egress() {
    local sizes
    sizes=$(while read -r d s f; do echo "$d $s"; done <<<"$BLOBS")
    tail -n "+$(($1 + 1))" "$RAW/origin.log" |
        awk -v sizes="$sizes" '
            BEGIN { n = split(sizes, a, "\n"); for (i = 1; i <= n; i++) { split(a[i], p, " "); size[p[1]] = p[2] } }
            / request method=GET path=\/v2\/.*\/blobs\/sha256:/ {
                match($0, /sha256:[0-9a-f]+/); d = substr($0, RSTART, RLENGTH)
                if ($0 ~ / status=200 /) { bytes += size[d]; full++ } else if ($0 ~ / status=206 /) { partial++ }
            }
            / request method=(GET|HEAD) path=\/v2\/.*\/manifests\// { man++ }
            END { printf "%.0f %d %d %d\n", bytes, full, partial, man }'
}

# origin_blob_gets MARK -> "label:count ..." full GETs per blob after MARK, in image order
# (config first), labelled by size.
origin_blob_gets() {
    local d s f n out="" lines
    lines=$(tail -n "+$(($1 + 1))" "$RAW/origin.log" | grep -E ' request method=GET path=/v2/.*/blobs/sha256:.* status=200 ' || true)
    while read -r d s f; do
        n=$(grep -c "/blobs/$d " <<<"$lines" || true)
        if ((s >= 1048576)); then out+="${out:+ }$((s / 1048576))MiB:$n"; else out+="${out:+ }${s}B:$n"; fi
    done <<<"$BLOBS"
    echo "$out"
}

# ---------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------
declare -A R        # results: R[who.metric]
FAILURES=()

# best / median of a space-separated list of seconds (FAIL entries ignored).
best() { tr ' ' '\n' <<<"$1" | grep -E '^[0-9.]+$' | sort -g | head -n 1; }
median() {
    tr ' ' '\n' <<<"$1" | grep -E '^[0-9.]+$' | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) printf "%.3f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
times_x() { awk -v b="$1" -v i="$IMAGE_BYTES" 'BEGIN { printf "%.2f", b / i }'; }
max_of() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "") print b; else print (b > a ? b : a) }'; }

cold_and_warm() { # who run
    local who=$1 run=$2 v i mark bytes full partial man
    start_mirror "$who" "cold$run"
    mark=$(origin_mark)
    if v=$(timed_pull "$who" "$MIRROR_URL" "$SCRATCH/dl-$who"); then :; else v=FAIL; FAILURES+=("$who cold pull (run $run)"); fi
    sleep 0.3 # a mirror may still be storing in the background; its origin GETs count too
    read -r bytes full partial man <<<"$(origin_egress "$mark")"
    log "run $run $who cold pull: $v s; origin served $full full blob GETs ($partial partial), $(times_x "$bytes")x the image"
    R[$who.cold_runs]+="${R[$who.cold_runs]:+ }$v"
    R[$who.cold_egress_x]=$(max_of "${R[$who.cold_egress_x]:-}" "$(times_x "$bytes")")
    for ((i = 1; i <= WARM_RUNS; i++)); do
        if v=$(timed_pull "$who" "$MIRROR_URL" "$SCRATCH/dl-$who"); then :; else v=FAIL; FAILURES+=("$who warm pull $i"); fi
        log "run $run $who warm pull $i: $v s"
        R[$who.warm_runs]+="${R[$who.warm_runs]:+ }$v"
    done
    if [[ $who == wharf ]]; then curl -sS "$MIRROR_URL/metrics" >"$RAW/wharf-cold$run.metrics" || true; fi
    stop_mirror "$who" "cold$run"
}

concurrent() { # who run
    local who=$1 run=$2 mark t0 c pids=() p failed=0 secs e
    start_mirror "$who" "concurrent$run"
    mark=$(origin_mark)
    t0=$(now)
    for ((c = 1; c <= CLIENTS; c++)); do
        pull "$MIRROR_URL" "$SCRATCH/cc-$who-$c" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
    secs=$(secs_since "$t0")
    sleep 0.5 # let the origin write its last log lines
    e=$(origin_egress "$mark")
    local bytes full partial man ok=0
    read -r bytes full partial man <<<"$e"
    for ((c = 1; c <= CLIENTS; c++)); do
        if verify "$SCRATCH/cc-$who-$c"; then ok=$((ok + 1)); else pull_errors "$SCRATCH/cc-$who-$c" >&2; fi
        rm -rf "$SCRATCH/cc-$who-$c"
    done
    if ((failed > 0 || ok != CLIENTS)); then
        FAILURES+=("$who concurrent: $failed of $CLIENTS pulls failed, $ok verified")
    fi
    local x per_blob
    x=$(times_x "$bytes")
    per_blob=$(origin_blob_gets "$mark")
    R[$who.concurrent_runs]+="${R[$who.concurrent_runs]:+ }$secs"
    R[$who.egress_x_runs]+="${R[$who.egress_x_runs]:+ }$x"
    R[$who.concurrent_ok]=$(((${R[$who.concurrent_ok]:-0}) + ok))
    # The worst run (most egress) is the one reported.
    if [[ -z ${R[$who.egress_x]:-} ]] || awk -v a="$x" -v b="${R[$who.egress_x]}" 'BEGIN { exit !(a > b) }'; then
        R[$who.egress_x]=$x
        R[$who.egress_bytes]=$bytes
        R[$who.egress_full_gets]=$full
        R[$who.egress_partial_gets]=$partial
        R[$who.egress_manifest_reqs]=$man
        R[$who.egress_per_blob]=$per_blob
    fi
    if [[ $who == wharf ]]; then
        curl -sS "$MIRROR_URL/metrics" >"$RAW/wharf-concurrent$run.metrics" || true
        R[wharf.upstream_bytes_metric]+="${R[wharf.upstream_bytes_metric]:+ }$(awk '$1 == "wharf_mirror_upstream_bytes_total" { print $2 }' "$RAW/wharf-concurrent$run.metrics")"
        R[wharf.coalesced_metric]+="${R[wharf.coalesced_metric]:+ }$(awk '$1 ~ /^wharf_mirror_coalesced_total/ { s += $2 } END { print s + 0 }' "$RAW/wharf-concurrent$run.metrics")"
    fi
    log "run $run $who: $CLIENTS concurrent cold pulls in $secs s, $ok verified; origin served $full full blob GETs" \
        "($partial partial), $bytes bytes = ${x}x the image; per blob: $per_blob; $man manifest requests"
    stop_mirror "$who" "concurrent$run"
}

# Percent of all cores busy over 2 s (see bench/registry.sh).
cpu_busy_pct() {
    local s1 s2
    s1=$(head -1 /proc/stat)
    sleep 2
    s2=$(head -1 /proc/stat)
    awk -v a="$s1" -v b="$s2" 'BEGIN {
        split(a, x, " "); split(b, y, " "); t = 0
        for (i = 2; i <= 9; i++) t += y[i] - x[i]
        idle = (y[5] - x[5]) + (y[6] - x[6])
        printf "%.0f", (t > 0 ? 100 * (t - idle) / t : 0) }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "-" }'; }
mibs() { awk -v b="$IMAGE_BYTES" -v s="$1" 'BEGIN { if (s ~ /^[0-9.]+$/ && s > 0) printf "%.0f", b / 1048576 / s; else print "-" }'; }

main() {
    local t_start
    t_start=$(now)
    preflight
    UPTIME_BEFORE=$(uptime)
    BUSY_BEFORE=$(cpu_busy_pct)
    WHARF_VERSION=$("$WHARF" --version)
    DIST_VERSION=$("$DISTRIBUTION" --version)
    log "$WHARF_VERSION vs $DIST_VERSION"
    log "before: $UPTIME_BEFORE; CPU busy with other work: $BUSY_BEFORE%"

    make_image
    # The origin logs every request: its GET lines are the egress count.
    start_wharf origin info,wharf_registry=debug --root "$SCRATCH/origin"
    ORIGIN_URL=$STARTED_URL
    log "origin at $ORIGIN_URL"
    push_origin

    local run who first second
    for ((run = 1; run <= COLD_RUNS; run++)); do
        # Alternate who goes first, so neither always meets a disk still flushing the other's data.
        if ((run % 2)); then first=wharf second=distribution; else first=distribution second=wharf; fi
        for who in $first $second; do cold_and_warm "$who" "$run"; done
    done
    for ((run = 1; run <= CONCURRENT_RUNS; run++)); do
        if ((run % 2)); then first=wharf second=distribution; else first=distribution second=wharf; fi
        for who in $first $second; do concurrent "$who" "$run"; done
    done

    for who in wharf distribution; do
        R[$who.cold_pull_s]=$(best "${R[$who.cold_runs]}")
        R[$who.cold_median_s]=$(median "${R[$who.cold_runs]}")
        R[$who.warm_pull_s]=$(best "${R[$who.warm_runs]}")
        R[$who.warm_median_s]=$(median "${R[$who.warm_runs]}")
        R[$who.concurrent_s]=$(best "${R[$who.concurrent_runs]}")
    done
    UPTIME_AFTER=$(uptime)
    BUSY_AFTER=$(cpu_busy_pct)
    RUNTIME=$(secs_since "$t_start")
    report
}

report() {
    local w=wharf d=distribution
    echo
    echo "wharf:        $WHARF_VERSION ($WHARF), mirror of a wharf origin"
    echo "distribution: $DIST_VERSION, proxy mode (proxy.remoteurl), filesystem storage"
    echo "image:        $NBLOBS blobs (config + layers of $LAYERS_MIB MiB), $IMAGE_BYTES bytes"
    echo "machine:      $(nproc) cores; before: $UPTIME_BEFORE"
    echo "              after:  $UPTIME_AFTER"
    echo "other work:   ${BUSY_BEFORE}% of CPU busy just before, ${BUSY_AFTER}% just after (2 s samples, our load idle)"
    if ((BUSY_BEFORE > 10 || BUSY_AFTER > 10)); then
        echo "WARNING:      something else was using the CPU around this run; the numbers compete with it"
    fi
    echo
    printf '%-34s %14s %14s %12s\n' metric wharf distribution wharf/dist
    printf '%-34s %14s %14s %12s\n' ------ ----- ------------ ----------
    printf '%-34s %14s %14s %12s\n' "cold pull, 1 client, best (s)" "${R[$w.cold_pull_s]}" "${R[$d.cold_pull_s]}" "$(ratio "${R[$w.cold_pull_s]}" "${R[$d.cold_pull_s]}")"
    printf '%-34s %14s %14s %12s\n' "  median (s)" "${R[$w.cold_median_s]}" "${R[$d.cold_median_s]}" "$(ratio "${R[$w.cold_median_s]}" "${R[$d.cold_median_s]}")"
    printf '%-34s %14s %14s %12s\n' "  best (MiB/s)" "$(mibs "${R[$w.cold_pull_s]}")" "$(mibs "${R[$d.cold_pull_s]}")" ""
    printf '%-34s %14s %14s %12s\n' "  origin egress (x image, worst)" "${R[$w.cold_egress_x]}x" "${R[$d.cold_egress_x]}x" ""
    printf '%-34s %14s %14s %12s\n' "warm pull, 1 client, best (s)" "${R[$w.warm_pull_s]}" "${R[$d.warm_pull_s]}" "$(ratio "${R[$w.warm_pull_s]}" "${R[$d.warm_pull_s]}")"
    printf '%-34s %14s %14s %12s\n' "  median (s)" "${R[$w.warm_median_s]}" "${R[$d.warm_median_s]}" "$(ratio "${R[$w.warm_median_s]}" "${R[$d.warm_median_s]}")"
    printf '%-34s %14s %14s %12s\n' "  best (MiB/s)" "$(mibs "${R[$w.warm_pull_s]}")" "$(mibs "${R[$d.warm_pull_s]}")" ""
    printf '%-34s %14s %14s %12s\n' "$CLIENTS concurrent cold pulls, best (s)" "${R[$w.concurrent_s]}" "${R[$d.concurrent_s]}" "$(ratio "${R[$w.concurrent_s]}" "${R[$d.concurrent_s]}")"
    printf '%-34s %14s %14s %12s\n' "  pulls verified" "${R[$w.concurrent_ok]}/$((CLIENTS * CONCURRENT_RUNS))" "${R[$d.concurrent_ok]}/$((CLIENTS * CONCURRENT_RUNS))" ""
    printf '%-34s %14s %14s %12s\n' "  origin egress (x image, worst)" "${R[$w.egress_x]}x" "${R[$d.egress_x]}x" "$(ratio "${R[$w.egress_x]}" "${R[$d.egress_x]}")"
    printf '%-34s %14s %14s %12s\n' "  origin egress (bytes)" "${R[$w.egress_bytes]}" "${R[$d.egress_bytes]}" ""
    printf '%-34s %14s %14s %12s\n' "  origin blob GETs (full/partial)" "${R[$w.egress_full_gets]}/${R[$w.egress_partial_gets]}" \
        "${R[$d.egress_full_gets]}/${R[$d.egress_partial_gets]}" ""
    printf '%-34s %14s %14s %12s\n' "  origin manifest HEAD+GETs" "${R[$w.egress_manifest_reqs]}" "${R[$d.egress_manifest_reqs]}" ""
    echo
    echo "origin full GETs per blob in the worst concurrent run: wharf ${R[$w.egress_per_blob]}"
    echo "                                                      distribution ${R[$d.egress_per_blob]}"
    echo "all runs: wharf cold (s) ${R[$w.cold_runs]}; warm ${R[$w.warm_runs]}; concurrent ${R[$w.concurrent_runs]} (egress x ${R[$w.egress_x_runs]})"
    echo "          distribution cold (s) ${R[$d.cold_runs]}; warm ${R[$d.warm_runs]}; concurrent ${R[$d.concurrent_runs]} (egress x ${R[$d.egress_x_runs]})"
    echo "wharf's own count for the concurrent runs: wharf_mirror_upstream_bytes_total ${R[wharf.upstream_bytes_metric]:-?}," \
        "coalesced requests ${R[wharf.coalesced_metric]:-?}"
    echo "notes: egress = origin request-log GET lines (status 200) for blobs x blob size; a pull = manifest GET,"
    echo "       then one curl per blob in parallel, into files, verified byte for byte afterwards (untimed);"
    echo "       page cache not dropped; $(nproc) cores shared by origin, mirror and clients. Runtime ${RUNTIME} s."
    echo "raw logs: $RAW"
    if ((${#FAILURES[@]})); then
        echo
        echo "FAILED: ${FAILURES[*]} (evidence above on stderr and in $RAW)"
    fi
    write_json
    echo "results: $OUT_DIR/mirror.json"
    ((${#FAILURES[@]} == 0))
}

json_num() { if [[ ${1:-} =~ ^[0-9.]+$ ]]; then printf '%s' "$1"; else printf 'null'; fi; }
json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]), end="")' "$1"; }
json_runs() { local v out="" ; for v in $1; do out+="${out:+, }$(json_num "$v")"; done; printf '[%s]' "$out"; }

write_json() {
    local who m first
    {
        printf '{\n  "date": "%s",\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf '  "wharf_version": %s,\n  "distribution_version": %s,\n' "$(json_str "$WHARF_VERSION")" "$(json_str "$DIST_VERSION")"
        printf '  "machine": {"cores": %d, "uptime_before": %s, "uptime_after": %s, "other_cpu_busy_pct_before": %d, "other_cpu_busy_pct_after": %d},\n' \
            "$(nproc)" "$(json_str "$UPTIME_BEFORE")" "$(json_str "$UPTIME_AFTER")" "$BUSY_BEFORE" "$BUSY_AFTER"
        printf '  "image": {"blobs": %d, "bytes": %d, "layers_mib": %s},\n' "$NBLOBS" "$IMAGE_BYTES" "$(json_str "$LAYERS_MIB")"
        printf '  "settings": {"clients": %d, "cold_runs": %d, "warm_runs": %d, "concurrent_runs": %d},\n' "$CLIENTS" "$COLD_RUNS" "$WARM_RUNS" "$CONCURRENT_RUNS"
        printf '  "runtime_s": %s,\n' "$(json_num "$RUNTIME")"
        for who in wharf distribution; do
            printf '  "%s": {' "$who"
            first=1
            for m in cold_pull_s cold_median_s cold_egress_x warm_pull_s warm_median_s concurrent_s concurrent_ok egress_bytes egress_x egress_full_gets egress_partial_gets egress_manifest_reqs; do
                ((first)) || printf ', '
                first=0
                printf '"%s": %s' "$m" "$(json_num "${R[$who.$m]:-}")"
            done
            printf ', "cold_runs_s": %s, "warm_runs_s": %s, "concurrent_runs_s": %s, "egress_x_runs": %s, "egress_per_blob_full_gets": %s' \
                "$(json_runs "${R[$who.cold_runs]:-}")" "$(json_runs "${R[$who.warm_runs]:-}")" \
                "$(json_runs "${R[$who.concurrent_runs]:-}")" "$(json_runs "${R[$who.egress_x_runs]:-}")" \
                "$(json_str "${R[$who.egress_per_blob]:-}")"
            if [[ $who == wharf ]]; then
                printf ', "upstream_bytes_metric_runs": %s, "coalesced_metric_runs": %s' \
                    "$(json_runs "${R[wharf.upstream_bytes_metric]:-}")" "$(json_runs "${R[wharf.coalesced_metric]:-}")"
            fi
            printf '},\n'
        done
        printf '  "ratios_wharf_over_distribution": {"cold_pull_s": %s, "cold_median_s": %s, "warm_pull_s": %s, "warm_median_s": %s, "concurrent_s": %s, "egress_x": %s},\n' \
            "$(json_num "$(ratio "${R[wharf.cold_pull_s]}" "${R[distribution.cold_pull_s]}")")" \
            "$(json_num "$(ratio "${R[wharf.cold_median_s]}" "${R[distribution.cold_median_s]}")")" \
            "$(json_num "$(ratio "${R[wharf.warm_pull_s]}" "${R[distribution.warm_pull_s]}")")" \
            "$(json_num "$(ratio "${R[wharf.warm_median_s]}" "${R[distribution.warm_median_s]}")")" \
            "$(json_num "$(ratio "${R[wharf.concurrent_s]}" "${R[distribution.concurrent_s]}")")" \
            "$(json_num "$(ratio "${R[wharf.egress_x]}" "${R[distribution.egress_x]}")")"
        printf '  "failures": ['
        first=1
        for m in "${FAILURES[@]}"; do ((first)) || printf ', '; first=0; json_str "$m"; done
        printf ']\n}\n'
    } >"$OUT_DIR/mirror.json"
}

main "$@"

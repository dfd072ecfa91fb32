#!/usr/bin/env bash
# bench/registry.sh: wharf vs the reference registry (CNCF distribution 2.8, Debian's
# `docker-registry`), run side by side on this machine, same data, one run each.
#
# Usage:
#   bench/registry.sh                        # uses ./target/release/wharf
#   WHARF=/path/to/wharf bench/registry.sh
#
# Knobs (environment):
#   WHARF         wharf binary                        (default ./target/release/wharf)
#   DISTRIBUTION  reference registry binary           (default /usr/bin/docker-registry)
#   DURATION      seconds per request-rate test       (default 10)
#   CONNECTIONS   concurrent connections              (default 32)
#   BIG_MIB       size of the big blob, MiB           (default 1024)
#   BLOB_RUNS     big PUT/GET repetitions, best taken (default 2)
#   BENCH_TMP     parent of the scratch dir; must be a real disk, not tmpfs (default /var/tmp)
#   OUT_DIR       where results JSON and raw logs go (default bench/out, gitignored)
#
# What it measures, for each registry:
#   manifest GET req/s     wrk on GET /v2/bench/app/manifests/v1
#   blob HEAD req/s        ab -i on HEAD /v2/bench/app/blobs/<layer>
#   small blob GET req/s   wrk on GET of the same small layer (a latency canary)
#   big blob PUT MiB/s     POST + one PUT ?digest= carrying BIG_MIB of data, best of BLOB_RUNS
#   big blob GET MiB/s     curl GET of that blob to /dev/null, best of BLOB_RUNS
# plus ceilings (disk write with fsync, loopback through an ideal server, sha256 on one
# core) so PUT and GET can be judged against what this machine allows, not only against
# distribution. Results: a table on stdout, OUT_DIR/registry.json, raw tool output in
# OUT_DIR/registry-raw/. Exit status 1 if any request failed its check.
#
# Caveats, printed again with the results: the page cache is not dropped (that would
# evict everything else on a shared machine, e.g. a running build's files), so big GETs
# read from cache for both registries; the machine has 2 cores, shared by load generator
# and server; CPU used by other work, just before and during the run, is reported.
set -euo pipefail

# Paths given by the caller are relative to where they ran us; the defaults are relative
# to the repo root, where we work from.
for var in WHARF DISTRIBUTION OUT_DIR BENCH_TMP; do
    if [[ -n ${!var:-} ]]; then printf -v "$var" '%s' "$(realpath -m "${!var}")"; fi
done
cd "$(dirname "$0")/.."

WHARF=${WHARF:-./target/release/wharf}
DISTRIBUTION=${DISTRIBUTION:-/usr/bin/docker-registry}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
BIG_MIB=${BIG_MIB:-1024}
BLOB_RUNS=${BLOB_RUNS:-2}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
OUT_DIR=${OUT_DIR:-bench/out}

MANIFEST_TYPE=application/vnd.oci.image.manifest.v1+json
REPO=bench/app
BIG_REPO=bench/big

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] FATAL: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
# Process bookkeeping: every background process this script starts goes into PIDS, and
# the exit trap stops exactly those, by PID, and removes the scratch dir (several GiB).
# ---------------------------------------------------------------------------------------
PIDS=()
SCRATCH=""
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Give each up to 5 s to exit on SIGTERM, then insist.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $SCRATCH && -d $SCRATCH ]]; then rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------
# Preflight
# ---------------------------------------------------------------------------------------
preflight() {
    [[ -x $WHARF ]] || die "wharf binary not found at $WHARF (build with cargo build --release, or set WHARF=)"
    WHARF=$(realpath "$WHARF")
    [[ -x $DISTRIBUTION ]] || die "distribution binary not found at $DISTRIBUTION (apt-get install docker-registry)"
    local tool
    for tool in curl wrk python3 sha256sum dd awk tar gzip; do
        command -v "$tool" >/dev/null || die "$tool is required"
    done
    # wrk 4.1 cannot benchmark HEAD: its response parser has no on_headers_complete hook,
    # so after a HEAD response carrying Content-Length: N it waits for N body bytes that
    # never come and completes 0 requests. ApacheBench's -i does HEAD properly.
    if ! command -v ab >/dev/null; then
        log "ab (apache2-utils) missing; installing it from Debian for the HEAD test"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends apache2-utils >&2 \
            || die "could not install apache2-utils (needed for HEAD req/s)"
    fi
    [[ $DURATION =~ ^[0-9]+$ ]] || die "DURATION is whole seconds, got '$DURATION'"

    mkdir -p "$OUT_DIR"
    OUT_DIR=$(realpath "$OUT_DIR")
    RAW="$OUT_DIR/registry-raw"
    rm -rf "$RAW"; mkdir -p "$RAW"

    mkdir -p "$BENCH_TMP"
    SCRATCH=$(mktemp -d "$BENCH_TMP/wharf-bench.XXXXXX")
    # A tmpfs scratch dir would turn the disk measurements into memory measurements.
    local fstype; fstype=$(stat -f -c %T "$SCRATCH")
    [[ $fstype != tmpfs ]] || die "BENCH_TMP=$BENCH_TMP is tmpfs; point it at a real disk"
    local need_kib=$(( (BIG_MIB * (2 * BLOB_RUNS + 2) + 512) * 1024 ))
    local avail_kib; avail_kib=$(df -Pk "$SCRATCH" | awk 'NR==2 {print $4}')
    (( avail_kib > need_kib )) || die "need ~$((need_kib / 1024)) MiB free under $BENCH_TMP, have $((avail_kib / 1024))"
    log "scratch dir $SCRATCH ($fstype, $(df -h --output=source "$SCRATCH" | tail -1))"
}

# ---------------------------------------------------------------------------------------
# Starting the two registries
# ---------------------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Sets WHARF_URL. wharf picks its own port (--listen :0) and prints the bound address.
start_wharf() {
    local root="$SCRATCH/wharf-data"
    # --log warn: per-request logging is not what this measures (distribution gets the same).
    "$WHARF" serve --listen 127.0.0.1:0 --root "$root" --log warn \
        >"$RAW/wharf.stdout" 2>"$RAW/wharf.stderr" &
    PIDS+=($!)
    local line=""
    for _ in $(seq 100); do
        line=$(grep -m1 'listening on' "$RAW/wharf.stdout" 2>/dev/null || true)
        [[ -n $line ]] && break
        sleep 0.1
    done
    [[ -n $line ]] || die "wharf did not report its address in 10 s: $(cat "$RAW/wharf.stderr")"
    WHARF_URL=${line##*listening on }
    wait_ready "$WHARF_URL" wharf
}

# Sets DIST_URL. distribution takes a YAML config; everything it stores lives in SCRATCH.
start_distribution() {
    local port; port=$(free_port)
    local root="$SCRATCH/distribution-data" cfg="$SCRATCH/distribution.yml"
    mkdir -p "$root"
    # inmemory blob descriptor cache: distribution's recommended setting for a single node,
    # the fair counterpart of wharf's in-memory descriptor cache. Access log off and level
    # error, so logging does not dominate the request path.
    cat >"$cfg" <<EOF
version: 0.1
log:
  level: error
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
EOF
    "$DISTRIBUTION" serve "$cfg" >"$RAW/distribution.stdout" 2>"$RAW/distribution.stderr" &
    PIDS+=($!)
    DIST_URL="http://127.0.0.1:$port"
    wait_ready "$DIST_URL" distribution
}

wait_ready() { # url name
    for _ in $(seq 100); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "$1/v2/" || true) == 200 ]]; then return 0; fi
        sleep 0.1
    done
    die "$2 at $1 did not answer GET /v2/ with 200 within 10 s"
}

# ---------------------------------------------------------------------------------------
# Blob upload, the same two-step way for both registries: POST opens a session, one PUT
# ?digest= carries the whole body and closes it. (distribution 2.8 ignores the body of a
# monolithic POST ?digest= and answers 202 with a session, so that form cannot be shared.)
# Prints "<http_code> <seconds of the PUT> <bytes uploaded>"; the POST is not timed.
# ---------------------------------------------------------------------------------------
upload_blob() { # base_url repo file digest
    local base=$1 repo=$2 file=$3 digest=$4 hdrs loc code
    hdrs=$(curl -sS -o /dev/null -D - -X POST "$base/v2/$repo/blobs/uploads/") || return 1
    code=$(printf '%s' "$hdrs" | awk 'NR==1 {print $2}')
    loc=$(printf '%s' "$hdrs" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
    if [[ $code != 202 || -z $loc ]]; then
        log "POST $base/v2/$repo/blobs/uploads/ -> expected 202 with Location, got:"
        printf '%s\n' "$hdrs" >&2
        return 1
    fi
    [[ $loc == http* ]] || loc="$base$loc"          # wharf answers with a relative Location
    if [[ $loc == *\?* ]]; then loc="$loc&digest=$digest"; else loc="$loc?digest=$digest"; fi
    # 'Expect:' off: curl would otherwise wait for 100-continue, which is a client choice,
    # not registry speed.
    curl -sS -o "$SCRATCH/put.body" -X PUT --upload-file "$file" \
        -H 'Content-Type: application/octet-stream' -H 'Expect:' \
        -w '%{http_code} %{time_total} %{size_upload}' "$loc"
}

# ---------------------------------------------------------------------------------------
# Seed: one small OCI image, byte-identical for both registries.
# ---------------------------------------------------------------------------------------
# openssl's sha256 uses the CPU's SHA extensions where present (~4x coreutils sha256sum
# here), so it is both the faster way to hash 1 GiB and the honest "CPU cost of hashing".
if command -v openssl >/dev/null; then
    sha256_of() { openssl dgst -sha256 -r "$@" | awk '{print "sha256:" $1}'; }   # no args: stdin
    SHA_TOOL=openssl
else
    sha256_of() { sha256sum "$@" | awk '{print "sha256:" $1}'; }
    SHA_TOOL=sha256sum
fi

make_image() {
    local d="$SCRATCH/image"
    mkdir -p "$d/rootfs/etc"
    printf 'wharf bench layer\n' >"$d/rootfs/etc/motd"
    # Deterministic tar+gzip (fixed mtime/owner, gzip -n), so reruns push the same digests.
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$d/layer.tar" -C "$d/rootfs" .
    gzip -n -c "$d/layer.tar" >"$d/layer.tar.gz"
    LAYER_FILE="$d/layer.tar.gz"
    LAYER_DIGEST=$(sha256_of "$LAYER_FILE")
    LAYER_SIZE=$(stat -c %s "$LAYER_FILE")
    local diff_id; diff_id=$(sha256_of "$d/layer.tar")
    printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
        "$diff_id" >"$d/config.json"
    CONFIG_FILE="$d/config.json"
    CONFIG_DIGEST=$(sha256_of "$CONFIG_FILE")
    printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
        "$MANIFEST_TYPE" "$CONFIG_DIGEST" "$(stat -c %s "$CONFIG_FILE")" "$LAYER_DIGEST" "$LAYER_SIZE" >"$d/manifest.json"
    MANIFEST_FILE="$d/manifest.json"
    MANIFEST_DIGEST=$(sha256_of "$MANIFEST_FILE")
}

seed() { # base_url name
    local base=$1 name=$2 r f dg
    for f in CONFIG LAYER; do
        local file_var="${f}_FILE" dig_var="${f}_DIGEST"
        r=$(upload_blob "$base" "$REPO" "${!file_var}" "${!dig_var}") || die "$name: seeding ${f,,} blob failed"
        [[ ${r%% *} == 201 ]] || die "$name: PUT ${f,,} blob -> ${r%% *}: $(cat "$SCRATCH/put.body")"
    done
    r=$(curl -sS -o "$SCRATCH/put.body" -D "$SCRATCH/put.hdrs" -w '%{http_code}' -X PUT \
        -H "Content-Type: $MANIFEST_TYPE" --data-binary @"$MANIFEST_FILE" "$base/v2/$REPO/manifests/v1")
    [[ $r == 201 ]] || die "$name: PUT /v2/$REPO/manifests/v1 -> $r: $(cat "$SCRATCH/put.body")"
    dg=$(tr -d '\r' <"$SCRATCH/put.hdrs" | awk 'tolower($1)=="docker-content-digest:" {print $2}')
    [[ $dg == "$MANIFEST_DIGEST" ]] || die "$name: manifest PUT returned digest '$dg', expected $MANIFEST_DIGEST"
    log "$name: seeded $REPO:v1 ($MANIFEST_DIGEST)"
}

# ---------------------------------------------------------------------------------------
# Request-rate tests. Each first checks, with curl, that the request really succeeds with
# the right content: a benchmark of 404s is worthless. Each prints req/s on stdout and
# returns non-zero (with the evidence on stderr) when the check or the run fails.
# ---------------------------------------------------------------------------------------
check_manifest_get() { # base name
    local code ctype
    code=$(curl -sS -o "$SCRATCH/check.body" -D "$SCRATCH/check.hdrs" -w '%{http_code}' \
        -H "Accept: $MANIFEST_TYPE" "$1/v2/$REPO/manifests/v1") || return 1
    ctype=$(tr -d '\r' <"$SCRATCH/check.hdrs" | awk 'tolower($1)=="content-type:" {print $2}')
    if [[ $code != 200 ]] || ! cmp -s "$SCRATCH/check.body" "$MANIFEST_FILE" || [[ $ctype != "$MANIFEST_TYPE" ]]; then
        log "$2: GET /v2/$REPO/manifests/v1 -> $code, Content-Type '$ctype'; body:"
        head -c 400 "$SCRATCH/check.body" >&2; echo >&2
        return 1
    fi
}

check_blob_head() { # base name
    local code len
    code=$(curl -sS -I -o "$SCRATCH/check.hdrs" -w '%{http_code}' "$1/v2/$REPO/blobs/$LAYER_DIGEST") || return 1
    len=$(tr -d '\r' <"$SCRATCH/check.hdrs" | awk 'tolower($1)=="content-length:" {print $2}')
    if [[ $code != 200 || $len != "$LAYER_SIZE" ]]; then
        log "$2: HEAD /v2/$REPO/blobs/$LAYER_DIGEST -> $code, Content-Length '$len' (want $LAYER_SIZE):"
        cat "$SCRATCH/check.hdrs" >&2
        return 1
    fi
}

check_blob_get() { # base name
    local code
    code=$(curl -sS -o "$SCRATCH/check.body" -w '%{http_code}' "$1/v2/$REPO/blobs/$LAYER_DIGEST") || return 1
    if [[ $code != 200 ]] || ! cmp -s "$SCRATCH/check.body" "$LAYER_FILE"; then
        log "$2: GET /v2/$REPO/blobs/$LAYER_DIGEST -> $code, body differs from the pushed layer"
        return 1
    fi
}

# wrk: -t1 leaves the other core to the server. Non-2xx counts and socket errors void
# the number (wrk only reports statuses > 399 as "Non-2xx or 3xx").
run_wrk() { # tag url [wrk args...]
    local tag=$1 url=$2; shift 2
    local out="$RAW/$tag.wrk.txt"
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$url" >"$out" 2>&1 || { cat "$out" >&2; return 1; }
    if grep -qE 'Non-2xx|Socket errors' "$out"; then
        log "$tag: wrk saw failures:"; grep -E 'Non-2xx|Socket errors|requests in' "$out" >&2
        return 1
    fi
    log "$tag: p50 latency $(awk '$1=="50%" {print $2}' "$out"), p99 $(awk '$1=="99%" {print $2}' "$out")"
    awk '/^Requests\/sec:/ {print $2}' "$out"
}

# ab -k -i: keep-alive HEAD. -n is only a cap; -t bounds the run.
run_ab_head() { # tag url
    local tag=$1 url=$2 out="$RAW/$1.ab.txt"
    ab -k -i -c "$CONNECTIONS" -t "$DURATION" -n 100000000 "$url" >"$out" 2>&1 || { cat "$out" >&2; return 1; }
    local failed non2xx
    failed=$(awk '/^Failed requests:/ {print $3}' "$out")
    non2xx=$(awk '/^Non-2xx responses:/ {print $3}' "$out")
    if [[ ${failed:-0} != 0 || -n $non2xx ]]; then
        log "$tag: ab saw failures (failed=$failed non-2xx=${non2xx:-0}):"; grep -E 'Complete|Failed|Non-2xx|Length|Exceptions' "$out" >&2
        return 1
    fi
    awk '/^Requests per second:/ {print $4}' "$out"
}

# ---------------------------------------------------------------------------------------
# Big blob. One BIG_MIB file of random data is generated once; before each run its first
# 64 bytes are restamped (in place, no copy) so every run uploads a digest neither
# registry has seen: no run can be shortened by "blob already exists" paths.
# ---------------------------------------------------------------------------------------
BIG_FILE=""
BIG_SIZE=0
SHA_MIBS=0   # best sha256 speed seen: the CPU cost every PUT must pay to verify its digest

make_big_file() {
    BIG_FILE="$SCRATCH/big.bin"
    log "generating ${BIG_MIB} MiB of random data"
    head -c "$((BIG_MIB * 1024 * 1024))" /dev/urandom >"$BIG_FILE"
    BIG_SIZE=$(stat -c %s "$BIG_FILE")
}

now() { date +%s.%N; }
mibs() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s; else print 0 }'; }
max_of() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 > b + 0) ? a : b }'; }
min_of() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 < b + 0) ? a : b }'; }

restamp_big_file() { # run -> sets BIG_DIGEST
    printf 'wharf-bench run %-8s %-40s' "$1" "$(date +%s%N)" | head -c 64 |
        dd of="$BIG_FILE" bs=64 count=1 conv=notrunc status=none
    local t0 t1; t0=$(now)
    BIG_DIGEST=$(sha256_of "$BIG_FILE")
    t1=$(now)
    SHA_MIBS=$(max_of "$SHA_MIBS" "$(mibs "$BIG_SIZE" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")")
}

put_big() { # base name -> prints MiB/s
    local r code secs bytes len
    r=$(upload_blob "$1" "$BIG_REPO" "$BIG_FILE" "$BIG_DIGEST") || return 1
    read -r code secs bytes <<<"$r"
    if [[ $code != 201 || $bytes != "$BIG_SIZE" ]]; then
        log "$2: PUT of $BIG_SIZE-byte blob $BIG_DIGEST -> $code after $bytes bytes: $(head -c 400 "$SCRATCH/put.body")"
        return 1
    fi
    # The blob must now exist with the right size, or the upload did not count.
    len=$(curl -sS -I "$1/v2/$BIG_REPO/blobs/$BIG_DIGEST" | tr -d '\r' | awk 'tolower($1)=="content-length:" {print $2}')
    [[ $len == "$BIG_SIZE" ]] || { log "$2: HEAD after PUT gives Content-Length '$len', want $BIG_SIZE"; return 1; }
    printf '%s %s\n' "$(mibs "$BIG_SIZE" "$secs")" "$secs" >>"$RAW/$2.put.txt"
    mibs "$BIG_SIZE" "$secs"
}

get_big() { # base name -> prints MiB/s
    local r code bytes secs
    r=$(curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "$1/v2/$BIG_REPO/blobs/$BIG_DIGEST") || return 1
    read -r code bytes secs <<<"$r"
    if [[ $code != 200 || $bytes != "$BIG_SIZE" ]]; then
        log "$2: GET $BIG_REPO blob $BIG_DIGEST -> $code with $bytes bytes, want 200 with $BIG_SIZE"
        return 1
    fi
    printf '%s %s\n' "$(mibs "$BIG_SIZE" "$secs")" "$secs" >>"$RAW/$2.get.txt"
    mibs "$BIG_SIZE" "$secs"
}

# One untimed GET piped through sha256: the bytes served are the bytes pushed.
verify_big_content() { # base name
    local got
    got=$(curl -sS "$1/v2/$BIG_REPO/blobs/$BIG_DIGEST" | sha256_of)
    [[ $got == "$BIG_DIGEST" ]] || { log "$2: GET of $BIG_DIGEST returned content hashing to $got"; return 1; }
}

# ---------------------------------------------------------------------------------------
# Ceilings: what this machine allows, independent of any registry.
#   disk    dd of the big file (already in page cache) to a new file on the scratch disk,
#           the best of two ways of making 1 GiB durable:
#             buffered   bs=4M conv=fdatasync: write all into page cache, flush at the end.
#                        Serial, so a server that starts writeback while it still receives
#                        (sync_file_range) can beat it: alone it is not an upper bound.
#             direct     bs=4M oflag=direct conv=fdatasync: straight to the device, then a
#                        cache flush: the device's own sequential write rate.
#           A registry that promises durability on 201 cannot beat the better of the two;
#           one that skips fsync can.
#   lo-put  curl (same flags as the registry PUT) uploading the file to an ideal server
#           that discards it: the loopback + curl cost of moving the bytes in.
#   lo-get  curl (same flags as the registry GET) downloading the file from an ideal
#           server that reads it from page cache in 4 MiB reads and sends it in 32 KiB
#           writes (TCP_NODELAY). On this machine that pattern beat sendfile() (~1.8 GiB/s)
#           and 1 MiB writes (~2.0 GiB/s) at ~2.5 GiB/s: curl, the receiver, is the
#           bottleneck, and small writes keep it fed. As a ceiling must not sit below a
#           result, the GET ceiling is the best that anything (ideal server or either
#           registry) delivered to curl in this run.
#   sha256  openssl hashing the file from page cache on one core: every byte of a PUT has
#           to go through one sequential sha256 before the registry may answer 201.
# The ideal server is a few lines of python around recv_into/readinto/sendall on big
# buffers, so the syscalls do the work and the interpreter is not the bottleneck
# (http.server would be).
# PUT ceiling = min(disk, lo-put, sha256); GET ceiling = max(lo-get, both registries' GETs).
# All of these are noisy on a 2-core VM (its virtual disk especially): each is sampled
# once or twice per run, interleaved with the registry transfers, and the best is kept.
# ---------------------------------------------------------------------------------------
IDEAL_SERVER_PY='
import os, socket, sys
path = sys.argv[1]
size = os.path.getsize(path)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)
print(srv.getsockname()[1], flush=True)
sink = memoryview(bytearray(1 << 20))
while True:
    conn, _ = srv.accept()
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                break
            head += chunk
        hdr, _, rest = head.partition(b"\r\n\r\n")
        lines = hdr.split(b"\r\n")
        if lines[0].startswith(b"PUT "):
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            left = length - len(rest)
            while left > 0:
                n = conn.recv_into(sink, min(left, len(sink)))
                if n == 0:
                    break
                left -= n
            conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        else:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size)
            buf = bytearray(4 << 20)
            view = memoryview(buf)
            with open(path, "rb", buffering=0) as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    for off in range(0, n, 32 << 10):
                        conn.sendall(view[off:min(off + (32 << 10), n)])
'

CEIL_LO_PUT=0
CEIL_LO_GET=0
CEIL_DISK=0
IDEAL_PORT=""

start_ideal_server() {
    python3 -c "$IDEAL_SERVER_PY" "$BIG_FILE" >"$RAW/ideal.stdout" 2>"$RAW/ideal.stderr" &
    PIDS+=($!)
    for _ in $(seq 50); do
        IDEAL_PORT=$(head -1 "$RAW/ideal.stdout" 2>/dev/null || true)
        [[ -n $IDEAL_PORT ]] && return 0
        sleep 0.1
    done
    die "ideal server did not start: $(cat "$RAW/ideal.stderr")"
}

# Samples of each ceiling, taken in the same run as the registry transfers so that a
# machine that gets busier (or quieter) mid-benchmark moves ceilings and results together.
CEIL_DISK_BUF=0
CEIL_DISK_DIRECT=0
measure_ceilings() {
    local r code secs bytes
    for _ in 1 2; do
        r=$(curl -sS -o /dev/null -X PUT --upload-file "$BIG_FILE" -H 'Content-Type: application/octet-stream' \
            -H 'Expect:' -w '%{http_code} %{time_total} %{size_upload}' "http://127.0.0.1:$IDEAL_PORT/put")
        read -r code secs bytes <<<"$r"
        [[ $code == 201 && $bytes == "$BIG_SIZE" ]] || die "ideal server PUT failed: $r"
        CEIL_LO_PUT=$(max_of "$CEIL_LO_PUT" "$(mibs "$BIG_SIZE" "$secs")")
        r=$(curl -sS -o /dev/null -w '%{http_code} %{time_total} %{size_download}' "http://127.0.0.1:$IDEAL_PORT/get")
        read -r code secs bytes <<<"$r"
        [[ $code == 200 && $bytes == "$BIG_SIZE" ]] || die "ideal server GET failed: $r"
        CEIL_LO_GET=$(max_of "$CEIL_LO_GET" "$(mibs "$BIG_SIZE" "$secs")")
    done
    CEIL_DISK_BUF=$(max_of "$CEIL_DISK_BUF" "$(dd_mibs conv=fdatasync)")
    CEIL_DISK_DIRECT=$(max_of "$CEIL_DISK_DIRECT" "$(dd_mibs oflag=direct conv=fdatasync)")
    CEIL_DISK=$(max_of "$CEIL_DISK_BUF" "$CEIL_DISK_DIRECT")
    CEIL_PUT=$(min_of "$(min_of "$CEIL_DISK" "$CEIL_LO_PUT")" "$SHA_MIBS")
    CEIL_GET=$CEIL_LO_GET
}

dd_mibs() { # dd flags... -> MiB/s writing the big file to the scratch disk
    local secs
    # dd reports "... bytes copied, S s, R MB/s" on stderr; take S and compute MiB/s.
    secs=$(dd if="$BIG_FILE" of="$SCRATCH/dd.out" bs=4M "$@" 2>&1 |
        awk -F', ' '/copied/ {split($(NF-1), a, " "); print a[1]}')
    rm -f "$SCRATCH/dd.out"
    mibs "$BIG_SIZE" "$secs"
}

# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------
FAILURES=()
declare -A W D   # per-metric results for wharf / distribution ("FAIL" when a check failed)

measure() { # metric name fn args... -> stores result into W or D
    local metric=$1 who=$2; shift 2
    local v
    if v=$("$@"); then :; else v=FAIL; FAILURES+=("$who $metric"); fi
    if [[ $who == wharf ]]; then W[$metric]=$v; else D[$metric]=$v; fi
    log "$who $metric: $v"
}

# Percent of all cores busy over 2 s, from /proc/stat (fields user..steal; guest time is
# already inside user). Sampled while none of our load runs, it shows what else is using
# the machine; the load average cannot, since it lags by a minute and counts our own runs.
cpu_busy_pct() {
    local s1 s2
    s1=$(head -1 /proc/stat); sleep 2; s2=$(head -1 /proc/stat)
    awk -v a="$s1" -v b="$s2" 'BEGIN {
        split(a, x, " "); split(b, y, " "); t = 0
        for (i = 2; i <= 9; i++) t += y[i] - x[i]
        idle = (y[5] - x[5]) + (y[6] - x[6])
        printf "%.0f", (t > 0 ? 100 * (t - idle) / t : 0) }'
}

# Contamination check over the whole run: CPU time (user+nice+system, in clock ticks)
# spent machine-wide, minus what this script, its children and its servers used. What is
# left was other work competing with the benchmark (plus kernel writeback threads
# flushing our own writes, so a few percent are expected even on an idle machine).
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4}' /proc/stat; }
our_ticks() {
    local t pid
    # Ours: utime+stime+cutime+cstime of this shell (waited-for children and their
    # descendants included), plus utime+stime of the servers still running.
    t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$$/stat")
    for pid in "${PIDS[@]}"; do
        if [[ -r /proc/$pid/stat ]]; then
            t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
        fi
    done
    echo "$t"
}

url_of() { if [[ $1 == wharf ]]; then echo "$WHARF_URL"; else echo "$DIST_URL"; fi; }

best_of_runs() { # metric who base verb(put|get) run
    local metric=$1 who=$2 base=$3 verb=$4 v
    v=$("${verb}_big" "$base" "$who") || { FAILURES+=("$who $metric"); v=FAIL; }
    log "run $5 $who big blob ${verb^^}: $v MiB/s"
    local prev
    if [[ $who == wharf ]]; then prev=${W[$metric]:-0}; else prev=${D[$metric]:-0}; fi
    if [[ $prev == FAIL || $v == FAIL ]]; then v=FAIL; else v=$(max_of "$prev" "$v"); fi
    if [[ $who == wharf ]]; then W[$metric]=$v; else D[$metric]=$v; fi
}

main() {
    preflight
    LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    BUSY_BEFORE=$(cpu_busy_pct)
    RUN_T0=$(machine_ticks); OURS_T0=$(our_ticks); RUN_S0=$(date +%s)
    WHARF_VERSION=$("$WHARF" --version)
    DIST_VERSION=$("$DISTRIBUTION" --version)
    log "$WHARF_VERSION vs $DIST_VERSION; load before: $LOAD_BEFORE; CPU busy with other work: $BUSY_BEFORE%"

    make_image
    make_big_file
    start_wharf
    start_distribution
    log "wharf at $WHARF_URL, distribution at $DIST_URL"
    seed "$WHARF_URL" wharf
    seed "$DIST_URL" distribution

    # Metric by metric, wharf then distribution back to back, so that a change in
    # background load mid-benchmark hits both sides of each ratio alike.
    local who base
    for who in wharf distribution; do
        base=$(url_of "$who")
        if check_manifest_get "$base" "$who"; then
            measure manifest_get_rps "$who" run_wrk "$who.manifest_get" "$base/v2/$REPO/manifests/v1" -H "Accept: $MANIFEST_TYPE"
        else
            measure manifest_get_rps "$who" false
        fi
    done
    for who in wharf distribution; do
        base=$(url_of "$who")
        if check_blob_head "$base" "$who"; then
            measure blob_head_rps "$who" run_ab_head "$who.blob_head" "$base/v2/$REPO/blobs/$LAYER_DIGEST"
        else
            measure blob_head_rps "$who" false
        fi
    done
    for who in wharf distribution; do
        base=$(url_of "$who")
        if check_blob_get "$base" "$who"; then
            measure small_blob_get_rps "$who" run_wrk "$who.small_blob_get" "$base/v2/$REPO/blobs/$LAYER_DIGEST"
        else
            measure small_blob_get_rps "$who" false
        fi
    done

    start_ideal_server
    local i first second
    for i in $(seq "$BLOB_RUNS"); do
        restamp_big_file "$i"
        measure_ceilings
        log "run $i ceilings (MiB/s, best so far): disk buffered $CEIL_DISK_BUF, direct $CEIL_DISK_DIRECT;" \
            "loopback put $CEIL_LO_PUT, get $CEIL_LO_GET; sha256 $SHA_MIBS"
        # Alternate who goes first, so neither always meets a disk still flushing the other's data.
        if (( i % 2 )); then first=wharf; second=distribution; else first=distribution; second=wharf; fi
        for who in $first $second; do
            base=$(url_of "$who")
            best_of_runs big_put_mibs "$who" "$base" put "$i"
            best_of_runs big_get_mibs "$who" "$base" get "$i"
        done
    done
    CEIL_GET=$(max_of "$CEIL_LO_GET" "$(max_of "${W[big_get_mibs]/FAIL/0}" "${D[big_get_mibs]/FAIL/0}")")
    verify_big_content "$WHARF_URL" wharf || { FAILURES+=("wharf big_get content"); W[big_get_mibs]=FAIL; }
    verify_big_content "$DIST_URL" distribution || { FAILURES+=("distribution big_get content"); D[big_get_mibs]=FAIL; }

    LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
    local run_ticks our
    run_ticks=$(( $(machine_ticks) - RUN_T0 )); our=$(( $(our_ticks) - OURS_T0 ))
    OTHER_CPU_S=$(awk -v t="$run_ticks" -v o="$our" -v hz="$(getconf CLK_TCK)" 'BEGIN { v = (t - o) / hz; printf "%.0f", (v > 0 ? v : 0) }')
    RUN_CPU_S=$(( ( $(date +%s) - RUN_S0 ) * $(nproc) ))
    OTHER_CPU_PCT=$(( RUN_CPU_S > 0 ? 100 * OTHER_CPU_S / RUN_CPU_S : 0 ))
    report
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "-" }'; }

report() {
    local m
    write_json   # first, so the numbers are kept even if stdout goes away mid-table
    echo
    echo "wharf:        $WHARF_VERSION ($WHARF)"
    echo "distribution: $DIST_VERSION"
    echo "machine:      $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); load avg before $LOAD_BEFORE, after $LOAD_AFTER"
    echo "other work:   ${BUSY_BEFORE}% of CPU busy just before; during the run other processes used" \
        "${OTHER_CPU_S} of ${RUN_CPU_S} core-seconds (${OTHER_CPU_PCT}%)"
    if (( BUSY_BEFORE > 10 || OTHER_CPU_PCT > 10 )); then
        echo "WARNING:      something else competed for the CPU during this run; treat the numbers as noisy"
    fi
    echo "settings:     ${DURATION}s per rate test, $CONNECTIONS connections, ${BIG_MIB} MiB blob, best of $BLOB_RUNS"
    echo
    printf '%-24s %12s %14s %12s %14s\n' metric wharf distribution wharf/dist wharf/ceiling
    printf '%-24s %12s %14s %12s %14s\n' ------ ----- ------------ ---------- -------------
    for m in manifest_get_rps blob_head_rps small_blob_get_rps; do
        printf '%-24s %12s %14s %12s %14s\n' "$m" "${W[$m]}" "${D[$m]}" "$(ratio "${W[$m]}" "${D[$m]}")" ""
    done
    printf '%-24s %12s %14s %12s %14s\n' big_put_mibs "${W[big_put_mibs]}" "${D[big_put_mibs]}" \
        "$(ratio "${W[big_put_mibs]}" "${D[big_put_mibs]}")" "$(ratio "${W[big_put_mibs]}" "$CEIL_PUT")"
    printf '%-24s %12s %14s %12s %14s\n' big_get_mibs "${W[big_get_mibs]}" "${D[big_get_mibs]}" \
        "$(ratio "${W[big_get_mibs]}" "${D[big_get_mibs]}")" "$(ratio "${W[big_get_mibs]}" "$CEIL_GET")"
    echo
    echo "ceilings (MiB/s, best samples): disk buffered+fdatasync $CEIL_DISK_BUF, disk O_DIRECT+fdatasync $CEIL_DISK_DIRECT,"
    echo "  loopback PUT (curl -> discard) $CEIL_LO_PUT, loopback GET (ideal server -> curl) $CEIL_LO_GET, sha256 ($SHA_TOOL, 1 core) $SHA_MIBS"
    echo "  PUT ceiling = min(best disk, loopback PUT, sha256) = $CEIL_PUT"
    echo "  GET ceiling = best GET anything delivered to curl (ideal server, wharf, distribution) = $CEIL_GET"
    echo "wrk p50/p99 latency: manifest $(latencies manifest_get); small blob $(latencies small_blob_get)"
    echo "  notes: page cache not dropped (big GETs are served from cache by both); HEAD rates come from ab -k -i"
    echo "         (wrk cannot do HEAD), the rest from wrk -t1; 2 cores shared by client and server."
    echo "raw tool output: $RAW"
    if ((${#FAILURES[@]})); then
        echo
        echo "FAILED: ${FAILURES[*]} (evidence above on stderr and in $RAW)"
    fi
    echo "results: $OUT_DIR/registry.json"
    ((${#FAILURES[@]} == 0))
}

latency_of() { # who tag -> "p50/p99" from the raw wrk output
    local f="$RAW/$1.$2.wrk.txt"
    [[ -f $f ]] || { echo "-"; return; }
    awk '$1=="50%" {p50=$2} $1=="99%" {p99=$2} END {print p50 "/" p99}' "$f"
}
latencies() { echo "wharf $(latency_of wharf "$1"), distribution $(latency_of distribution "$1")"; }

json_num() { [[ $1 =~ ^[0-9.]+$ ]] && printf '%s' "$1" || printf 'null'; }

write_json() {
    local m first=1
    {
        printf '{\n  "date": "%s",\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf '  "wharf_version": "%s",\n  "distribution_version": "%s",\n' "$WHARF_VERSION" "$DIST_VERSION"
        printf '  "machine": {"cores": %d, "load_before": "%s", "load_after": "%s", "other_cpu_busy_pct_before": %d, "other_cpu_seconds_during_run": %d, "run_core_seconds": %d},\n' \
            "$(nproc)" "$LOAD_BEFORE" "$LOAD_AFTER" "$BUSY_BEFORE" "$OTHER_CPU_S" "$RUN_CPU_S"
        printf '  "settings": {"duration_s": %d, "connections": %d, "big_mib": %d, "blob_runs": %d},\n' \
            "$DURATION" "$CONNECTIONS" "$BIG_MIB" "$BLOB_RUNS"
        printf '  "ceilings_mibs": {"disk_buffered_fdatasync": %s, "disk_direct_fdatasync": %s, "loopback_put": %s, "loopback_get": %s, "sha256": %s, "put": %s, "get": %s},\n' \
            "$(json_num "$CEIL_DISK_BUF")" "$(json_num "$CEIL_DISK_DIRECT")" "$(json_num "$CEIL_LO_PUT")" "$(json_num "$CEIL_LO_GET")" \
            "$(json_num "$SHA_MIBS")" "$(json_num "$CEIL_PUT")" "$(json_num "$CEIL_GET")"
        printf '  "metrics": {\n'
        for m in manifest_get_rps blob_head_rps small_blob_get_rps big_put_mibs big_get_mibs; do
            ((first)) || printf ',\n'
            first=0
            printf '    "%s": {"wharf": %s, "distribution": %s, "ratio": %s' "$m" \
                "$(json_num "${W[$m]}")" "$(json_num "${D[$m]}")" "$(json_num "$(ratio "${W[$m]}" "${D[$m]}")")"
            case $m in
                manifest_get_rps | small_blob_get_rps)
                    printf ', "p50_p99_latency": {"wharf": "%s", "distribution": "%s"}' \
                        "$(latency_of wharf "${m%_rps}")" "$(latency_of distribution "${m%_rps}")" ;;
                big_put_mibs) printf ', "wharf_over_ceiling": %s' "$(json_num "$(ratio "${W[$m]}" "$CEIL_PUT")")" ;;
                big_get_mibs) printf ', "wharf_over_ceiling": %s' "$(json_num "$(ratio "${W[$m]}" "$CEIL_GET")")" ;;
            esac
            printf '}'
        done
        printf '\n  },\n  "failures": ['
        first=1
        for m in "${FAILURES[@]}"; do ((first)) || printf ', '; first=0; printf '"%s"' "$m"; done
        printf ']\n}\n'
    } >"$OUT_DIR/registry.json"
}

main "$@"

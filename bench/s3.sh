#!/usr/bin/env bash
# bench/s3.sh: manifest GET/HEAD requests/s of `wharf serve` on the S3 backend with the metadata cache off, in
# memory, and in Redis, one run each, same data. S3 is moto's server on loopback (every object request is a
# Python HTTP round trip, ~1-3 ms here; real S3 is 10-30 ms, so the cache matters more there, not less).
#
# Usage:  bench/s3.sh                     (uses ./target/release/wharf)
# Knobs:  WHARF, DURATION (s per test, default 10), CONNECTIONS (default 32), OUT_DIR (default bench/out)
# Needs:  moto_server (pip install 'moto[server]'), redis-server, wrk, ab (apache2-utils), curl.
#
# Prints a table (req/s and the ratio to "off") and writes OUT_DIR/s3.json.
set -euo pipefail
for var in WHARF OUT_DIR; do
    if [[ -n ${!var:-} ]]; then printf -v "$var" '%s' "$(realpath -m "${!var}")"; fi
done
cd "$(dirname "$0")/.."
WHARF=${WHARF:-./target/release/wharf}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
OUT_DIR=${OUT_DIR:-bench/out}
MT=application/vnd.oci.image.manifest.v1+json

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] FATAL: %s\n' "$*" >&2; exit 1; }
for tool in moto_server redis-server wrk ab curl python3; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
[[ -x $WHARF ]] || die "no wharf binary at $WHARF (cargo build --release -p wharf)"

PIDS=()
WORK=$(mktemp -d /tmp/wharf-bench-s3.XXXXXX)
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    local port=$1 i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on $port"
}

S3_PORT=$(free_port)
moto_server -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$S3_PORT"
wait_port "$REDIS_PORT"
curl -sf -X PUT "http://127.0.0.1:$S3_PORT/bench" >/dev/null

# One small image: config, two layers, manifest tagged v1.
python3 - "$WORK" <<'PY'
import hashlib, json, os, sys
w = sys.argv[1]
blobs = [b'{"architecture":"amd64","os":"linux"}', os.urandom(4096), os.urandom(65536)]
ds = []
for b in blobs:
    d = "sha256:" + hashlib.sha256(b).hexdigest()
    open(os.path.join(w, d.split(":")[1]), "wb").write(b)
    ds.append((d, len(b)))
m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": ds[0][0], "size": ds[0][1]},
     "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s} for d, s in ds[1:]]}
open(os.path.join(w, "manifest.json"), "wb").write(json.dumps(m).encode())
open(os.path.join(w, "blobs.txt"), "w").write("\n".join(d for d, _ in ds) + "\n")
PY

start_wharf() {
    local kind=$1 name=$2 redis_url=""
    [[ $kind == redis ]] && redis_url="redis://127.0.0.1:$REDIS_PORT/"
    cat >"$WORK/$name.toml" <<TOML
[storage]
backend = "s3"
root = "$WORK/$name-root"
[storage.options]
bucket = "bench"
root = "/$name"
endpoint = "http://127.0.0.1:$S3_PORT"
region = "us-east-1"
access_key_id = "bench"
secret_access_key = "bench"
disable_config_load = "true"
disable_ec2_metadata = "true"
[cache]
kind = "$kind"
[redis]
url = "$redis_url"
prefix = "bench-$name:"
[log]
level = "warn"
TOML
    "$WHARF" serve --listen 127.0.0.1:0 --config "$WORK/$name.toml" >"$WORK/$name.out" 2>"$WORK/$name.log" &
    WHARF_PID=$!
    PIDS+=("$WHARF_PID")
    local i
    for ((i = 0; i < 100; i++)); do
        ADDR=$(sed -n 's|^wharf serve: listening on http://||p' "$WORK/$name.out")
        [[ -n $ADDR ]] && return 0
        sleep 0.1
    done
    cat "$WORK/$name.log" >&2
    die "wharf ($kind) did not start"
}

push() {
    local d
    while read -r d; do
        curl -sf -X POST --data-binary "@$WORK/${d#sha256:}" "http://$ADDR/v2/bench/app/blobs/uploads/?digest=$d" >/dev/null
    done <"$WORK/blobs.txt"
    curl -sf -X PUT -H "Content-Type: $MT" --data-binary "@$WORK/manifest.json" "http://$ADDR/v2/bench/app/manifests/v1" >/dev/null
}

declare -A GET HEAD
for kind in off memory redis; do
    start_wharf "$kind" "w-$kind"
    push
    url="http://$ADDR/v2/bench/app/manifests/v1"
    # Warm-up, and a check that the answer is right.
    [[ $(curl -sf -H "Accept: $MT" "$url" | sha256sum | cut -d' ' -f1) == $(sha256sum <"$WORK/manifest.json" | cut -d' ' -f1) ]] ||
        die "$kind: wrong manifest"
    log "$kind: GET for ${DURATION}s"
    out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -H "Accept: $MT" "$url")
    grep -q "Non-2xx" <<<"$out" && die "$kind: failed GETs: $out"
    GET[$kind]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    log "$kind: HEAD for ${DURATION}s"
    out=$(ab -q -k -i -t "$DURATION" -n 10000000 -c "$CONNECTIONS" -H "Accept: $MT" "$url" 2>&1)
    failed=$(awk '/Failed requests/ {print $3}' <<<"$out")
    non2xx=$(awk '/Non-2xx responses/ {print $3}' <<<"$out")
    [[ ${failed:-0} == 0 && -z ${non2xx:-} ]] || die "$kind: failed HEADs: $out"
    HEAD[$kind]=$(awk '/Requests per second/ {printf "%.0f", $4}' <<<"$out")
    kill "$WHARF_PID"
    wait "$WHARF_PID" 2>/dev/null || true
done

mkdir -p "$OUT_DIR"
printf '\nwharf on S3 (moto on loopback), manifest requests/s, %s connections, %ss each, %s cores\n' \
    "$CONNECTIONS" "$DURATION" "$(nproc)"
printf '%-8s %12s %8s %12s %8s\n' cache "GET req/s" "x off" "HEAD req/s" "x off"
for kind in off memory redis; do
    printf '%-8s %12s %8s %12s %8s\n' "$kind" "${GET[$kind]}" \
        "$(awk -v a="${GET[$kind]}" -v b="${GET[off]}" 'BEGIN {printf "%.1f", a / b}')" "${HEAD[$kind]}" \
        "$(awk -v a="${HEAD[$kind]}" -v b="${HEAD[off]}" 'BEGIN {printf "%.1f", a / b}')"
done
printf '{"get":{"off":%s,"memory":%s,"redis":%s},"head":{"off":%s,"memory":%s,"redis":%s}}\n' \
    "${GET[off]}" "${GET[memory]}" "${GET[redis]}" "${HEAD[off]}" "${HEAD[memory]}" "${HEAD[redis]}" >"$OUT_DIR/s3.json"

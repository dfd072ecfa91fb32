#!/usr/bin/env bash
# bench/build-cache.sh: the smart cache and `wharf build --push` against docker's CI recipe, side by side in one
# run, on a generated corpus (issue 19's targets).
#
# Usage:
#   cargo build --release -p wharf && bench/build-cache.sh
#
# Knobs (environment):
#   WHARF        wharf binary (client and registry)                  (default ./target/release/wharf)
#   APPS         applications (repositories)                          (default 4)
#   DEPSETS      dependency sets shared between them                  (default 5)
#   DEP_SECS     seconds the dependency step costs (RUN sleep)        (default 3)
#   DEP_MIB      the dependency layer, MiB                            (default 4)
#   BUILD_SECS   seconds the application's build step costs           (default 1)
#   HEAVY_STEPS  steps of the heavy image                             (default 4)
#   HEAVY_SECS   seconds each heavy step costs                        (default 1)
#   HEAVY_MIB    each heavy step's layer, MiB of random bytes in base64 (compressible as a binary is,
#                slow to compress)                                    (default 96, a 128 MiB file)
#   PARTS        which parts to run: corpus, heavy or both            (default "corpus heavy")
#   BENCH_TMP    parent of the scratch dir (a real disk)              (default /var/tmp)
#   OUT_DIR      results and raw logs                                 (default bench/out, gitignored)
#
# The corpus: APPS x DEPSETS Dockerfile variants (20 by default) on one busybox base (imported here): WORKDIR,
# COPY the dependency list, RUN the dependency install (DEP_SECS, a DEP_MIB layer), ENV APP=<app>, COPY src/,
# RUN the build (BUILD_SECS), CMD. Before the timed part, sibling images are pushed (untimed) to two registries,
# one per side: each app's repository holds `latest` (the app built with another dependency set, as a repo's last
# release is) and, for half of the (app, deps) pairs, that pair built from older sources; so the best cache for a
# case is sometimes in its own repository and sometimes in another app's. Each case is the variant with changed
# sources, built on a cold engine (every image but the base removed):
#   docker   docker pull REPO:latest; docker build --cache-from REPO:latest; docker push   (its registry)
#   wharf    wharf build --push                                                            (its registry)
# in alternating order. The oracle: the most steps any image on wharf's registry (at that moment) serves as
# --cache-from, from the engine's own history of the image wharf built (the classic builder's rule: the base's
# history equal, then created_by equal step by step). Every wharf build must hit exactly the oracle's steps and
# pull no more than 1.1x the bytes of the layers it matched.
# The heavy image: HEAVY_STEPS steps of HEAVY_SECS and HEAVY_MIB each, no cache: `docker build` + `wharf push`
# against `wharf build --push` (which sends each layer while the next step runs).
#
# Targets (issue 19): hits = oracle in every case; bytes pulled <= 1.1x matched; wharf build --push <= 0.5x the
# docker recipe over the corpus; <= 0.8x docker build + wharf push on the heavy image.
set -euo pipefail

for var in WHARF OUT_DIR BENCH_TMP; do
    if [[ -n ${!var:-} ]]; then printf -v "$var" '%s' "$(realpath -m "${!var}")"; fi
done
cd "$(dirname "$0")/.."
WHARF=${WHARF:-$PWD/target/release/wharf}
APPS=${APPS:-4}
DEPSETS=${DEPSETS:-5}
DEP_SECS=${DEP_SECS:-3}
DEP_MIB=${DEP_MIB:-4}
BUILD_SECS=${BUILD_SECS:-1}
HEAVY_STEPS=${HEAVY_STEPS:-4}
HEAVY_SECS=${HEAVY_SECS:-1}
HEAVY_MIB=${HEAVY_MIB:-96}
PARTS=${PARTS:-corpus heavy}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
OUT_DIR=${OUT_DIR:-bench/out}

# shellcheck source-path=SCRIPTDIR source=../tests/e2e/lib.sh disable=SC1091
. tests/e2e/lib.sh

log() { printf '[bench] %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
sum() { awk '{ s += $1 } END { printf "%.3f", s }'; }

export NO_PROXY='*' no_proxy='*' DOCKER_BUILDKIT=0
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
unset RUST_LOG WHARF_STORE WHARF_CONFIG WHARF_SRC_CREDS WHARF_DEST_CREDS WHARF_CACHE_REGISTRY

mkdir -p "$OUT_DIR" "$BENCH_TMP"
OUT_DIR=$(realpath "$OUT_DIR")
RAW=$OUT_DIR/build-cache-raw
rm -rf "$RAW"
mkdir -p "$RAW"
RESULT=$OUT_DIR/build-cache-$(date +%Y%m%d-%H%M%S).txt
TMPDIR=$(realpath "$BENCH_TMP") e2e_init bench-build-cache
export WHARF_STORE=$WORK/wharf-store

start_wharf reg-docker
REG_D=$WHARF_STARTED_ADDR
start_wharf reg-wharf
REG_W=$WHARF_STARTED_ADDR
start_dockerd bench-build --insecure-registry "$REG_D" --insecure-registry "$REG_W" >/dev/null
BASE=base/busybox:1
busybox_base "$REG_W/$BASE"
docker tag "$REG_W/$BASE" "$REG_D/$BASE"
for reg in "$REG_D" "$REG_W"; do
    run_quiet "$RAW/push-base-$reg.log" "$WHARF" push --quiet "docker-daemon:$reg/$BASE" "$reg/$BASE"
done

# ctx DIR APP DEPS SRC: a variant's build context.
ctx() {
    local dir=$1 app=$2 deps=$3 src=$4 reg=$5
    rm -rf "$dir"
    mkdir -p "$dir/src"
    printf 'dependency set %s\npkg-%s-a\npkg-%s-b\n' "$deps" "$deps" "$deps" >"$dir/deps.txt"
    printf 'app %s sources, version %s\n' "$app" "$src" >"$dir/src/main.txt"
    cat >"$dir/Dockerfile" <<EOF
FROM $reg/$BASE
WORKDIR /app
COPY deps.txt ./
RUN sleep $DEP_SECS && dd if=/dev/urandom of=/app/deps.bin bs=1M count=$DEP_MIB 2>/dev/null && cat deps.txt >deps.list
ENV APP=app$app
COPY src/ ./src/
RUN sleep $BUILD_SECS && dd if=/dev/urandom of=/app/app.bin bs=64k count=16 2>/dev/null
CMD ["/bin/sh"]
EOF
}

# cold: an engine that holds only the base image.
cold() {
    docker image ls --format '{{.Repository}}:{{.Tag}}' | grep -v "/$BASE\$" | grep -v '<none>' |
        xargs -r docker rmi -f >/dev/null 2>&1 || true
    docker image prune -f >/dev/null 2>&1 || true
    docker image inspect "$REG_W/$BASE" >/dev/null 2>&1 || die "the base image was removed"
}

# Siblings on both registries (untimed): built with docker, pushed with wharf.
declare -a TAGS_W=()
sibling() {
    local app=$1 deps=$2 tag=$3
    ctx "$WORK/sib" "$app" "$deps" old "$REG_W"
    run_quiet "$RAW/sib-build-$app-$tag.log" docker build -q -t "$REG_W/app$app:$tag" "$WORK/sib"
    run_quiet "$RAW/sib-push-w-$app-$tag.log" "$WHARF" push --quiet "docker-daemon:$REG_W/app$app:$tag" "$REG_W/app$app:$tag"
    # The docker side gets the same image under its own registry's name (a FROM of its base).
    ctx "$WORK/sib" "$app" "$deps" old "$REG_D"
    run_quiet "$RAW/sib-build-d-$app-$tag.log" docker build -q -t "$REG_D/app$app:$tag" "$WORK/sib"
    run_quiet "$RAW/sib-push-d-$app-$tag.log" "$WHARF" push --quiet "docker-daemon:$REG_D/app$app:$tag" "$REG_D/app$app:$tag"
    TAGS_W+=("app$app:$tag")
}
corpus() {
log "pushing the siblings"
for ((a = 0; a < APPS; a++)); do
    for ((d = 0; d < DEPSETS; d++)); do
        if (((a + d) % 2 == 0)); then sibling "$a" "$d" "d$d-old"; fi
    done
    sibling "$a" "$(((a + 1) % DEPSETS))" latest
    cold
done

# oracle IMAGE: the most Dockerfile steps any image on wharf's registry serves IMAGE's build from cache.
oracle() {
    local image=$1
    curl -sS --unix-socket "$WORK/docker.sock" "http://engine/images/$image/history" >"$WORK/history.json"
    python3 - "$REG_W" "$BASE" "$WORK/history.json" "${TAGS_W[@]}" <<'PY'
import json, sys, urllib.request
reg, base, history_file, tags = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
def get(path, accept_header=None):
    req = urllib.request.Request(f"http://{reg}{path}")
    if accept_header:
        req.add_header("Accept", accept_header)
    with urllib.request.urlopen(req) as r:
        return json.load(r)
def history(repo, tag):
    m = get(f"/v2/{repo}/manifests/{tag}", accept)
    return get(f"/v2/{repo}/blobs/{m['config']['digest']}")["history"]
repo, tag = base.split(":")
base_history = history(repo, tag)
built = [h["CreatedBy"] for h in reversed(json.load(open(history_file)))][len(base_history):]
best = 0
for t in tags:
    repo, tag = t.split(":")
    h = history(repo, tag)
    if h[:len(base_history)] != base_history:
        continue
    n = 0
    for mine, theirs in zip(built, h[len(base_history):]):
        if mine != theirs.get("created_by"):
            break
        n += 1
    best = max(best, n)
print(best)
PY
}

# bytes_of REG REPO:TAG: compressed bytes of the image's layers beyond the base.
bytes_of() {
    local reg=$1 ref=$2 base_layers
    base_layers=$(http -H "Accept: $DOCKER_V2, $OCI_MANIFEST" "http://$reg/v2/${BASE%%:*}/manifests/${BASE##*:}" | jq '.layers | length')
    http -H "Accept: $DOCKER_V2, $OCI_MANIFEST" "http://$reg/v2/${ref%%:*}/manifests/${ref##*:}" |
        jq --argjson n "$base_layers" '[.layers[$n:][].size] | add // 0'
}

run_docker() {
    local a=$1 d=$2 t
    ctx "$WORK/case" "$a" "$d" new "$REG_D"
    cold
    sync
    t=$(now)
    run_quiet "$RAW/d-pull-$a-$d.log" docker pull "$REG_D/app$a:latest"
    run_quiet "$RAW/d-build-$a-$d.log" docker build --cache-from "$REG_D/app$a:latest" -t "$REG_D/app$a:c$d" "$WORK/case"
    run_quiet "$RAW/d-push-$a-$d.log" docker push "$REG_D/app$a:c$d"
    D_SECS=$(since "$t")
    D_HITS=$(grep -c 'Using cache' "$RAW/d-build-$a-$d.log" || true)
    D_PULLED=$(bytes_of "$REG_D" "app$a:latest")
}

run_wharf() {
    local a=$1 d=$2 t
    ctx "$WORK/case" "$a" "$d" new "$REG_W"
    cold
    sync
    t=$(now)
    run_quiet "$RAW/w-build-$a-$d.log" "$WHARF" build --json --push -t "$REG_W/app$a:c$d" "$WORK/case"
    W_SECS=$(since "$t")
    tail -n 1 "$RAW/w-build-$a-$d.log" >"$RAW/w-build-$a-$d.json"
    W_HITS=$(jq -r .steps_cached "$RAW/w-build-$a-$d.json")
    W_PULLED=$(jq -r .bytes_pulled_for_cache "$RAW/w-build-$a-$d.json")
    W_ORACLE=$(oracle "$REG_W/app$a:c$d")
    # The bytes of the layers the hit steps made, beyond the base (the candidate's prefix).
    W_MATCHED=$(jq -r .cache_bytes_matched "$RAW/w-build-$a-$d.json")
    TAGS_W+=("app$a:c$d")
}

{
    echo "# bench/build-cache.sh $(date -u +%FT%TZ) on $(nproc) cores; wharf $(date -r "$WHARF" '+%F %T'); $(docker version -f 'dockerd {{.Server.Version}}, docker CLI {{.Client.Version}}')"
    echo "# corpus: $APPS apps x $DEPSETS dependency sets; dependency step ${DEP_SECS}s/${DEP_MIB} MiB, build step ${BUILD_SECS}s"
    printf '%-8s %9s %5s %11s | %9s %5s %6s %11s %11s | %6s\n' case docker hits pulled wharf hits oracle pulled matched ratio
} | tee "$RESULT"
total_d=0
total_w=0
miss=0
over=0
n=0
for ((a = 0; a < APPS; a++)); do
    for ((d = 0; d < DEPSETS; d++)); do
        if (((a + d) % 2 == 0)); then
            run_docker "$a" "$d"
            run_wharf "$a" "$d"
        else
            run_wharf "$a" "$d"
            run_docker "$a" "$d"
        fi
        n=$((n + 1))
        total_d=$(awk -v a="$total_d" -v b="$D_SECS" 'BEGIN { print a + b }')
        total_w=$(awk -v a="$total_w" -v b="$W_SECS" 'BEGIN { print a + b }')
        [[ "$W_HITS" == "$W_ORACLE" ]] || miss=$((miss + 1))
        if awk -v p="$W_PULLED" -v m="$W_MATCHED" 'BEGIN { exit !(p > 1.1 * m) }'; then over=$((over + 1)); fi
        printf '%-8s %9s %5s %11s | %9s %5s %6s %11s %11s | %6s\n' "a$a-d$d" "$D_SECS" "$D_HITS" "$D_PULLED" \
            "$W_SECS" "$W_HITS" "$W_ORACLE" "$W_PULLED" "$W_MATCHED" "$(ratio "$W_SECS" "$D_SECS")" | tee -a "$RESULT"
    done
done
{
    echo "corpus: $n cases; docker recipe $(printf '%.1f' "$total_d") s, wharf build --push $(printf '%.1f' "$total_w") s: $(ratio "$total_w" "$total_d")x (target <= 0.5x)"
    echo "cache hits equal to the oracle in $((n - miss)) of $n cases (target: all); bytes pulled > 1.1x matched in $over cases (target: none)"
} | tee -a "$RESULT"
}

# The heavy image: no cache; the overlap of building and pushing.
heavy_ctx() {
    local dir=$1 token=$2 i
    rm -rf "$dir"
    mkdir -p "$dir"
    {
        echo "FROM $REG_W/$BASE"
        for ((i = 1; i <= HEAVY_STEPS; i++)); do
            echo "RUN sleep $HEAVY_SECS && dd if=/dev/urandom bs=1M count=$HEAVY_MIB 2>/dev/null | base64 >/heavy$i.txt && echo $token-$i"
        done
    } >"$dir/Dockerfile"
}
heavy() {
cold
heavy_ctx "$WORK/heavy" "a$RANDOM"
t=$(now)
run_quiet "$RAW/heavy-build.log" docker build -t "$REG_W/heavy:a" "$WORK/heavy"
t_build=$(since "$t")
run_quiet "$RAW/heavy-push.log" "$WHARF" push --json "docker-daemon:$REG_W/heavy:a" "$REG_W/heavy:a"
t_seq=$(since "$t")
cold
heavy_ctx "$WORK/heavy" "b$RANDOM"
t=$(now)
run_quiet "$RAW/heavy-wharf.log" "$WHARF" build --json --push -t "$REG_W/heavy:b" "$WORK/heavy"
t_overlap=$(since "$t")
early=$(tail -n 1 "$RAW/heavy-wharf.log" | jq -r .layers_pushed_early)
{
    echo "heavy image ($HEAVY_STEPS steps x ${HEAVY_SECS}s, ${HEAVY_MIB} MiB random in base64 each): docker build ${t_build} s + wharf push = ${t_seq} s; wharf build --push ${t_overlap} s ($early layers pushed during the build): $(ratio "$t_overlap" "$t_seq")x (target <= 0.8x)"
} | tee -a "$RESULT"
}

[[ " $PARTS " != *" corpus "* ]] || corpus
[[ " $PARTS " != *" heavy "* ]] || heavy
log "results: $RESULT"

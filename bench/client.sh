#!/usr/bin/env bash
# bench/client.sh: wharf's smart client vs the reference tools (docker, umoci, skopeo), each
# pair timed in the same run on this machine, against the same kind of registry (`wharf serve`).
#
# Usage:
#   cargo build --release -p wharf && bench/client.sh
#   SIZE_MIB=256 RUNS=2 bench/client.sh          # a smaller image, best of two runs
#
# Knobs (environment):
#   WHARF          wharf binary (client and registry)        (default ./target/release/wharf)
#   SIZE_MIB       raw (uncompressed) image size, MiB          (default 1024)
#   LAYERS         layers in the image                         (default 6)
#   RUNS           runs of every timed step, best taken        (default 1)
#   GZIP_LEVEL     wharf's --compression-level for gzip        (default 6, as docker)
#   ZSTD_LEVEL     wharf's --compression-level for zstd        (default: wharf's own, 3)
#   JOBS           wharf's --jobs                              (default: wharf's own)
#   STEPS          all, or push (the push pair alone: ~1 min)  (default all)
#   VERIFY_LAYERS  1: decompress every pushed layer and check it against the config's diff_ids
#                  (untimed, ~10 s per push)                   (default 1)
#   BENCH_TMP      parent of the scratch dir; a real disk, not tmpfs (default /var/tmp)
#   OUT_DIR        results and raw logs                        (default bench/out, gitignored)
#   UMOCI          umoci binary                                (default /usr/bin/umoci)
#   DOCKER_CLI, DOCKERD  as in tests/e2e/lib.sh; E2E_KEEP=1 keeps the scratch directory.
#
# The image: LAYERS layers of real files copied from /usr/lib, /usr/share and /usr/bin
# (binaries, libraries, text; already-compressed formats left out), SIZE_MIB in all, which
# gzip compresses about 3:1 (the issue's reference image: 1.0 GiB raw, 326 MiB gzip). The
# first layer is `docker import`ed, the others are one COPY each (legacy builder), in a
# private dockerd (tests/e2e/lib.sh's start_dockerd: no network, no containers run).
#
# Timed steps, each pair in the same run, every one from fresh state (a new registry per run,
# so docker cannot mount layers it pushed before; new repository names; the daemon emptied
# of every image and layer before each pull; a new --store for every wharf command; a new
# directory for every unpack/layout):
#   push    docker push  vs  wharf push docker-daemon:IMG (gzip level 6; and zstd)
#   pull    docker pull  vs  wharf pull REF docker-daemon:REF2 (both of docker's push); and,
#           as floors (no comparison), docker save to /dev/null and docker load of its tar
#   rootfs  docker pull, and umoci unpack of a local OCI layout (made by skopeo, untimed),
#           vs wharf pull REF rootfs:DIR, and vs wharf copy oci:LAYOUT:TAG rootfs:DIR
#   oci     skopeo copy vs wharf copy, OCI layout -> registry (a fresh registry each) and
#           registry -> OCI layout
# Every result is checked after its timing (untimed): image IDs, manifests and their layers
# in the registry (decompressed and hashed against the config's diff_ids), every file of an
# unpacked rootfs (content and mode, against the files the image was built from), every blob
# of a written layout. A step whose command or check fails is FAILED, and the script goes on.
#
# Output: a table (step, reference seconds, wharf seconds, ratio = reference/wharf, target,
# met) on stdout and in OUT_DIR/client-<date>.txt; logs of every command in
# OUT_DIR/client-raw/. Exit status 1 if a command or a check failed.
#
# Caveats (printed with the results): the page cache is not dropped (that would evict the
# other work's files on a shared machine), so every tool reads warm data; `sync` runs before
# each timed step so that no step pays for another's writeback; the machine's cores are
# shared with whatever else runs: for every step, the CPU time we used (client, dockerd and
# registry) and the share other work took are printed, and a step where other work took
# more than 10% of the machine is named in a warning. The wharf binary is copied into the
# scratch dir first, so a rebuild in the shared target dir cannot swap it mid-run.
set -euo pipefail

for var in WHARF OUT_DIR BENCH_TMP UMOCI; do
    if [[ -n ${!var:-} ]]; then printf -v "$var" '%s' "$(realpath -m "${!var}")"; fi
done
cd "$(dirname "$0")/.."

WHARF=${WHARF:-./target/release/wharf}
[[ -x $WHARF ]] || { echo "wharf binary not found at $WHARF (cargo build --release -p wharf, or set WHARF=)" >&2; exit 1; }
WHARF=$(realpath "$WHARF")
SIZE_MIB=${SIZE_MIB:-1024}
LAYERS=${LAYERS:-6}
RUNS=${RUNS:-1}
GZIP_LEVEL=${GZIP_LEVEL:-6}
ZSTD_LEVEL=${ZSTD_LEVEL:-}
JOBS=${JOBS:-}
VERIFY_LAYERS=${VERIFY_LAYERS:-1}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
OUT_DIR=${OUT_DIR:-bench/out}
UMOCI=${UMOCI:-/usr/bin/umoci}

# The e2e helpers: e2e_init/cleanup (scratch dir, traps, stopping our processes by PID),
# start_dockerd, pass/fail/die, http, sk/setup_skopeo, image_id, push_digest, tagged_digest.
# shellcheck source-path=SCRIPTDIR source=../tests/e2e/lib.sh disable=SC1091
. tests/e2e/lib.sh
# select_files, build_bench_image: the benchmark image (shared with bench/incremental.sh).
# shellcheck source=image.sh disable=SC1091
. bench/image.sh

log() { printf '[bench] %s\n' "$*" >&2; }

# A proxy from the environment must never see loopback traffic (dockerd inherits this too).
export NO_PROXY='*' no_proxy='*'
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
# wharf's own settings from the caller's environment must not change what we measure.
unset RUST_LOG WHARF_STORE WHARF_CONFIG WHARF_SRC_CREDS WHARF_DEST_CREDS

[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || { echo "SIZE_MIB must be a positive integer" >&2; exit 1; }
[[ $LAYERS =~ ^[1-9][0-9]*$ ]] || { echo "LAYERS must be a positive integer" >&2; exit 1; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 1; }

mkdir -p "$OUT_DIR" "$BENCH_TMP"
OUT_DIR=$(realpath "$OUT_DIR")
RAW=$OUT_DIR/client-raw
rm -rf "$RAW"
mkdir -p "$RAW"
STAMP=$(date +%Y%m%d-%H%M%S)
RESULT=$OUT_DIR/client-$STAMP.txt

TMPDIR=$(realpath "$BENCH_TMP") e2e_init bench-client

# The exit trap: keep the logs that live in the scratch dir, then lib.sh's cleanup (stops
# dockerd and our registries by PID, unmounts the daemon's overlays, removes $WORK).
bench_exit() {
    local rc=$?
    [[ "$BASHPID" == "$MAIN_PID" ]] || return 0
    set +e # the trap must run to its end; cleanup reads our exit status from $?
    cp "$WORK"/*.log "$RAW"/ 2>/dev/null
    (exit "$rc")
    cleanup
}
trap bench_exit EXIT

# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------
now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f MiB", b / 1048576 }'; }

# Percent of all cores busy over 2 s (as in bench/mirror.sh): other work competing with us.
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

# wharf client options shared by every wharf command; each also gets its own fresh --store.
WHARF_OPTS=(--json)
[[ -z $JOBS ]] || WHARF_OPTS+=(--jobs "$JOBS")
STORE_N=0
fresh_store() {
    STORE_N=$((STORE_N + 1))
    FRESH_STORE=$WORK/store-$STORE_N
    rm -rf "$FRESH_STORE"
}

# CPU accounting per timed step (as in bench/registry.sh), in clock ticks: the machine's
# user+nice+system time, and ours: this shell with its waited-for children (the timed
# command) plus the servers (dockerd, its containerd, the registries) and their children.
# Ours is what the step cost (client, daemon and registry together); machine minus ours is
# other work competing with the step (plus kernel writeback threads flushing our writes).
HZ=$(getconf CLK_TCK)
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4}' /proc/stat; }
our_ticks() {
    local t pid
    t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$$/stat")
    for pid in "$DOCKERD_PID" "$(cat "$WORK/exec/containerd/containerd.pid" 2>/dev/null)" "${E2E_PIDS[@]}"; do
        if [[ -n $pid && -r /proc/$pid/stat ]]; then
            t=$((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat")))
        fi
    done
    echo "$t"
}

# ---------------------------------------------------------------------------------------
# Timing and results. T[KEY.RUN] holds seconds, or FAILED (command) / BAD (check failed);
# CPU[KEY.RUN] our core-seconds, OTHER[KEY.RUN] other work's share of the machine (%).
# ---------------------------------------------------------------------------------------
declare -A T CPU OTHER
ERRORS=()

# timed KEY LOG CMD...: sync, then run CMD with its output in LOG, timed. On failure, the
# step is FAILED and the command and its last output lines are kept for the report.
timed() {
    local key=$1 logf=$2 t0 m0 o0 m1 o1 rc=0
    shift 2
    sync
    log "run $RUN: $key: $*"
    m0=$(machine_ticks)
    o0=$(our_ticks)
    t0=$(now)
    "$@" >"$logf" 2>&1 || rc=$?
    T[$key.$RUN]=$(secs_since "$t0")
    m1=$(machine_ticks)
    o1=$(our_ticks)
    CPU[$key.$RUN]=$(awk -v o=$((o1 - o0)) -v hz="$HZ" 'BEGIN { printf "%.1f", o / hz }')
    OTHER[$key.$RUN]=$(awk -v m=$((m1 - m0)) -v o=$((o1 - o0)) -v hz="$HZ" -v s="${T[$key.$RUN]}" -v n="$(nproc)" \
        'BEGIN { v = (m - o) / hz; if (v < 0) v = 0; printf "%.0f", (s > 0 ? 100 * v / (s * n) : 0) }')
    if ((rc == 0)); then
        log "run $RUN: $key: ${T[$key.$RUN]} s, ${CPU[$key.$RUN]} core-s (client+daemon+registry)," \
            "other work ${OTHER[$key.$RUN]}% of the machine"
        return 0
    fi
    T[$key.$RUN]=FAILED
    ERRORS+=("$key (run $RUN): \`$*\` exited $rc: $(tail -n 5 "$logf" | tr '\n' ' ')")
    fail "$key (run $RUN): command failed (exit $rc), see $logf"
    return 1
}

# checked KEY CHECK_CMD...: a check after a successful timed step; a failed check turns the
# step's time into BAD (a broken result must not look fast).
checked() {
    local key=$1
    shift
    if ! "$@"; then
        if [[ ${T[$key.$RUN]:-} != FAILED ]]; then
            ERRORS+=("$key (run $RUN): the result failed its check ($1); time ${T[$key.$RUN]:-?} s discarded")
        fi
        T[$key.$RUN]=BAD
    fi
}

# best KEY: the smallest time over the runs; FAILED if any run failed or was BAD.
best() {
    local r v out="" bad=0
    for ((r = 1; r <= RUNS; r++)); do
        v=${T[$1.$r]:-FAILED}
        if [[ $v =~ ^[0-9.]+$ ]]; then
            if [[ -z $out ]] || awk -v a="$v" -v b="$out" 'BEGIN { exit !(a < b) }'; then out=$v; fi
        else
            bad=1
        fi
    done
    if ((bad)) || [[ -z $out ]]; then echo FAILED; else echo "$out"; fi
}
all_runs() {
    local r out=""
    for ((r = 1; r <= RUNS; r++)); do
        out+="${out:+;  }${T[$1.$r]:-FAILED} s / ${CPU[$1.$r]:-?} core-s / ${OTHER[$1.$r]:-?}%"
    done
    echo "$out"
}

# ---------------------------------------------------------------------------------------
# Registries: `wharf serve` with warnings-only logs (no per-request logging), stopped by
# lib.sh's cleanup (E2E_PIDS) or by stop_registry.
# ---------------------------------------------------------------------------------------

# start_registry NAME -> REG_ADDR (127.0.0.1:PORT), REG_PID; root $WORK/NAME-root.
start_registry() {
    local name=$1 i line
    rm -rf "$WORK/$name-root"
    : >"$WORK/$name.out"
    env -u WHARF_CONFIG -u WHARF_LISTEN -u WHARF_ROOT -u RUST_LOG NO_COLOR=1 \
        "$WHARF" serve --listen 127.0.0.1:0 --root "$WORK/$name-root" --log warn \
        >"$WORK/$name.out" 2>"$WORK/$name.log" &
    REG_PID=$!
    E2E_PIDS+=("$REG_PID")
    E2E_WHARF_NAMES+=("$name")
    for ((i = 0; i < 100; i++)); do
        line=$(head -n 1 "$WORK/$name.out")
        if [[ "$line" =~ ^wharf\ serve:\ listening\ on\ http://(127\.0\.0\.1:[0-9]+)$ ]]; then
            REG_ADDR=${BASH_REMATCH[1]}
            log "registry $name (pid $REG_PID) on $REG_ADDR"
            return 0
        fi
        kill -0 "$REG_PID" 2>/dev/null || die "registry $name exited before listening" "$WORK/$name.log"
        sleep 0.1
    done
    die "registry $name did not print its listening line within 10 s" "$WORK/$name.log"
}

# stop_registry PID NAME: stop it (lib.sh's stop_own_pid) and remove its data; its log
# stays in $WORK until the exit trap copies it to $RAW.
stop_registry() {
    stop_own_pid "$1"
    rm -rf "$WORK/$2-root"
}

to_null() { "$@" >/dev/null; }

manifest_of() { http --fail -H "Accept: $DOCKER_V2, $OCI_MANIFEST" "http://$1/v2/$2/manifests/$3"; }
manifest_digest() { http --fail -I -H "Accept: $DOCKER_V2, $OCI_MANIFEST" "http://$1/v2/$2/manifests/$3" | digest_header; }
blob_of() { http --fail "http://$1/v2/$2/blobs/$3"; }

# ---------------------------------------------------------------------------------------
# The Docker engine: emptied before every pull
# ---------------------------------------------------------------------------------------

# wipe_daemon: remove every image (tagged, pulled, and the builder's intermediates) and
# check that the daemon holds no layer at all, so that a pull downloads every byte.
wipe_daemon() {
    local i n=1
    for ((i = 0; i < 3; i++)); do
        "$DOCKER_CLI" image prune -af >/dev/null
        # Images with several tags or in use as parents: remove whatever is left.
        "$DOCKER_CLI" image ls -aq | sort -u | xargs -r "$DOCKER_CLI" rmi -f >/dev/null 2>&1 || true
        n=$(find "$WORK/data/overlay2" -mindepth 1 -maxdepth 1 ! -name l 2>/dev/null | wc -l)
        if [[ -z $("$DOCKER_CLI" image ls -aq) ]] && ((n == 0)); then return 0; fi
        sleep 1
    done
    die "the daemon still holds images or $n layer directories after removing every image"
}

# ---------------------------------------------------------------------------------------
# The image
# ---------------------------------------------------------------------------------------
IMG=bench/src:1

# ---------------------------------------------------------------------------------------
# Checks (untimed)
# ---------------------------------------------------------------------------------------

# check_push LABEL REG REPO TAG KIND: the manifest is in the registry, names the image's
# config and NLAYERS layers of KIND (gzip, zstd); with VERIFY_LAYERS=1 every layer
# decompresses to the diff_id the config gives it. Sets PUSHED_BYTES[LABEL].
declare -A PUSHED_BYTES
check_push() {
    local label=$1 reg=$2 repo=$3 tag=$4 kind=$5 m cfg n i mt d want got dec bad=0
    if ! m=$(manifest_of "$reg" "$repo" "$tag"); then
        fail "$label: no manifest for $repo:$tag in the registry"
        return 1
    fi
    cfg=$(jq -r '.config.digest' <<<"$m")
    n=$(jq '.layers | length' <<<"$m")
    PUSHED_BYTES[$label]=$(jq '[.layers[].size] | add' <<<"$m")
    expect_eq "$label: manifest names the image's config" "$cfg" "$IMG_ID"
    [[ $cfg == "$IMG_ID" ]] || bad=1
    [[ $n == "$NLAYERS" ]] || bad=1
    expect_eq "$label: manifest has $NLAYERS layers" "$n" "$NLAYERS"
    for ((i = 0; i < n; i++)); do
        mt=$(jq -r ".layers[$i].mediaType" <<<"$m")
        if [[ $mt != *"$kind" ]]; then
            fail "$label: layer $i media type $mt, want *$kind"
            bad=1
        fi
    done
    if [[ $VERIFY_LAYERS == 1 && $bad == 0 ]]; then
        local diff_ids
        mapfile -t diff_ids < <(blob_of "$reg" "$repo" "$cfg" | jq -r '.rootfs.diff_ids[]')
        for ((i = 0; i < n; i++)); do
            d=$(jq -r ".layers[$i].digest" <<<"$m")
            want=${diff_ids[i]:-none}
            case $kind in
                zstd) dec=(zstd -dc) ;;
                *) dec=(gzip -dc) ;;
            esac
            got=sha256:$(blob_of "$reg" "$repo" "$d" | "${dec[@]}" | sha256sum | cut -d' ' -f1) || got="error"
            if [[ $got != "$want" ]]; then
                fail "$label: layer $i ($d) decompresses to $got, config says $want"
                bad=1
            fi
        done
        ((bad)) || pass "$label: every layer decompresses to its diff_id"
    fi
    ((bad == 0))
}

# check_docker_push LOG REG REPO: docker uploaded every layer (none mounted or skipped) and
# the registry has the manifest docker reported.
check_docker_push() {
    local logf=$1 reg=$2 repo=$3 pushed digest ok=0
    pushed=$(count_lines ': Pushed$' "$logf")
    digest=$(push_digest "$logf")
    expect_eq "docker push: every layer uploaded" "$pushed" "$NLAYERS"
    [[ $pushed == "$NLAYERS" ]] || ok=1
    expect_eq "docker push: registry has the pushed digest" "$(manifest_digest "$reg" "$repo" 1 || true)" "$digest"
    [[ -n $digest && "$(manifest_digest "$reg" "$repo" 1 || true)" == "$digest" ]] || ok=1
    check_push "docker push" "$reg" "$repo" 1 gzip || ok=1
    return $ok
}

# check_docker_pull LOG REF: docker downloaded every layer (none already there) and has the
# original image.
check_docker_pull() {
    local n
    n=$(count_lines ': Pull complete$' "$1")
    expect_eq "docker pull: every layer downloaded" "$n" "$NLAYERS"
    check_image "docker pull" "$2" && [[ $n == "$NLAYERS" ]]
}

# check_image LABEL REF: the daemon has REF with the original image's ID (the daemon checks
# every layer against the config's diff_ids when it registers them).
check_image() {
    local id
    id=$(image_id "$2" 2>/dev/null || echo missing)
    expect_eq "$1: image ID" "$id" "$IMG_ID"
    [[ $id == "$IMG_ID" ]]
}

# check_rootfs LABEL DIR: every regular file of the image is in DIR with its content and
# mode, and nothing else.
check_rootfs() {
    local label=$1 dir=$2 got bad=0
    if [[ ! -d $dir ]]; then
        fail "$label: $dir missing"
        return 1
    fi
    (cd "$dir" && find . -type f -printf '%P\0' | xargs -0r sha256sum --) | LC_ALL=C sort >"$WORK/got.sha256"
    (cd "$dir" && find . -type f -printf '%m %P\n') | LC_ALL=C sort >"$WORK/got.mode"
    got=$(wc -l <"$WORK/got.sha256")
    if cmp -s "$WORK/got.sha256" "$WORK/expected.sha256"; then
        pass "$label: all $got files byte-identical to the image's"
    else
        fail "$label: $got files, want $EXPECTED_FILES; first differences:"
        diff "$WORK/expected.sha256" "$WORK/got.sha256" | head -n 8 >&2 || true
        bad=1
    fi
    if cmp -s "$WORK/got.mode" "$WORK/expected.mode"; then
        pass "$label: every file's mode as in the image"
    else
        fail "$label: file modes differ; first differences:"
        diff "$WORK/expected.mode" "$WORK/got.mode" | head -n 8 >&2 || true
        bad=1
    fi
    ((bad == 0))
}

# check_layout_blobs LABEL LAYOUT: every blob file hashes to its name.
check_layout_blobs() {
    local label=$1 layout=$2 f bad=0
    for f in "$layout"/blobs/sha256/*; do
        if [[ "$(sha256_of "$f")" != "${f##*/}" ]]; then
            echo "$label: blob ${f##*/} does not hash to its name" >&2
            bad=1
        fi
    done
    expect_eq "$label: every blob hashes to its name" "$bad" 0
    ((bad == 0))
}

# check_oci_out LABEL LAYOUT TAG REG REPO: registry -> layout: TAG names a manifest with the
# layers of REG/REPO:1 and a config with the image's diff_ids (skopeo rewrites the config
# when it converts a Docker manifest to OCI), and every blob is there and sound.
check_oci_out() {
    local label=$1 layout=$2 tag=$3 reg=$4 repo=$5 d m want got cfg bad=0
    d=$(tagged_digest "$layout" "$tag" 2>/dev/null || true)
    if [[ -z $d || ! -f $layout/blobs/sha256/${d#sha256:} ]]; then
        fail "$label: no manifest tagged $tag in $layout"
        return 1
    fi
    m=$(cat "$layout/blobs/sha256/${d#sha256:}")
    want=$(manifest_of "$reg" "$repo" 1 | jq -c '[.layers[] | .digest, .size]')
    got=$(jq -c '[.layers[] | .digest, .size]' <<<"$m")
    expect_eq "$label: same layers as the registry's manifest" "$got" "$want"
    [[ $got == "$want" ]] || bad=1
    cfg=$(jq -r '.config.digest' <<<"$m")
    got=$(jq -c '.rootfs.diff_ids' "$layout/blobs/sha256/${cfg#sha256:}" 2>/dev/null || echo "no config blob $cfg")
    expect_eq "$label: config has the image's diff_ids" "$got" "$IMG_DIFF_IDS"
    [[ $got == "$IMG_DIFF_IDS" ]] || bad=1
    local b
    for b in $(jq -r '.config.digest, .layers[].digest' <<<"$m"); do
        if [[ ! -f $layout/blobs/sha256/${b#sha256:} ]]; then
            fail "$label: blob $b missing"
            bad=1
        fi
    done
    check_layout_blobs "$label" "$layout" || bad=1
    ((bad == 0))
}

# check_oci_in LABEL REG REPO: layout -> registry: the registry's tag 1 is the layout's
# manifest, byte-exact (same digest), and every blob it names is in the repository.
check_oci_in() {
    local label=$1 reg=$2 repo=$3 d m b bad=0
    d=$(manifest_digest "$reg" "$repo" 1 || true)
    expect_eq "$label: registry has the layout's manifest digest" "$d" "$LAYOUT_DIGEST"
    [[ $d == "$LAYOUT_DIGEST" ]] || return 1
    m=$(manifest_of "$reg" "$repo" 1)
    for b in $(jq -r '.config.digest, .layers[].digest' <<<"$m"); do
        if ! http --fail -I "http://$reg/v2/$repo/blobs/$b" >/dev/null; then
            fail "$label: blob $b not in $repo"
            bad=1
        fi
    done
    ((bad == 0))
}

# ---------------------------------------------------------------------------------------
# One run of every timed step
# ---------------------------------------------------------------------------------------
one_run() {
    local reg reg_pid d comp_opts
    start_registry "reg-r$RUN"
    reg=$REG_ADDR reg_pid=$REG_PID

    # ---- push: docker push vs wharf push docker-daemon:IMG (gzip, zstd)
    if [[ "$(image_id "$IMG" 2>/dev/null || true)" != "$IMG_ID" ]]; then
        # The image as built, from `docker save` (run 1), without any record of past pushes.
        wipe_daemon
        run_quiet "$RAW/load-r$RUN.log" "$DOCKER_CLI" load -i "$WORK/img.tar"
        check_image "reload" "$IMG" || die "the reloaded image has another ID"
    fi
    local dref=$reg/bench/docker-r$RUN
    "$DOCKER_CLI" tag "$IMG" "$dref:1"
    if timed docker_push "$RAW/docker-push-r$RUN.log" "$DOCKER_CLI" push "$dref:1"; then
        checked docker_push check_docker_push "$RAW/docker-push-r$RUN.log" "$reg" "bench/docker-r$RUN"
    fi

    # wharf's first pushes go to a registry of their own: in $reg, wharf's layer index would hand it the layers
    # docker just pushed (an incremental push, bench/incremental.sh), not a first push.
    local preg ppid
    start_registry "push-r$RUN"
    preg=$REG_ADDR ppid=$REG_PID
    fresh_store
    if timed wharf_push_gzip "$RAW/wharf-push-gzip-r$RUN.log" "$WHARF" push "${WHARF_OPTS[@]}" --store "$FRESH_STORE" \
        --compression gzip --compression-level "$GZIP_LEVEL" "docker-daemon:$IMG" "$preg/bench/wharf-gzip-r$RUN:1"; then
        checked wharf_push_gzip check_push "wharf push gzip" "$preg" "bench/wharf-gzip-r$RUN" 1 gzip
    fi
    rm -rf "$FRESH_STORE"

    fresh_store
    comp_opts=(--compression zstd)
    [[ -z $ZSTD_LEVEL ]] || comp_opts+=(--compression-level "$ZSTD_LEVEL")
    if timed wharf_push_zstd "$RAW/wharf-push-zstd-r$RUN.log" "$WHARF" push "${WHARF_OPTS[@]}" --store "$FRESH_STORE" \
        "${comp_opts[@]}" "docker-daemon:$IMG" "$preg/bench/wharf-zstd-r$RUN:1"; then
        checked wharf_push_zstd check_push "wharf push zstd" "$preg" "bench/wharf-zstd-r$RUN" 1 zstd
    fi
    rm -rf "$FRESH_STORE"
    stop_registry "$ppid" "push-r$RUN"

    # The floor of any push from docker-daemon: the engine's export (GET /images/get, which
    # wharf reads) alone, to /dev/null. Not a comparison; printed under the table.
    if timed docker_save "$RAW/docker-save-r$RUN.log" to_null "$DOCKER_CLI" save "$IMG"; then :; fi
    if ((RUN == 1)); then
        # For the docker load floor below, and to restore the image for later runs.
        run_quiet "$RAW/save.log" "$DOCKER_CLI" save -o "$WORK/img.tar" "$IMG"
    fi
    if [[ ${STEPS:-all} == push ]]; then
        stop_registry "$reg_pid" "reg-r$RUN"
        return 0
    fi

    # ---- pull into the engine: docker pull vs wharf pull docker-daemon:, from an empty daemon
    wipe_daemon
    if timed docker_pull "$RAW/docker-pull-r$RUN.log" "$DOCKER_CLI" pull "$dref:1"; then
        checked docker_pull check_docker_pull "$RAW/docker-pull-r$RUN.log" "$dref:1"
    fi
    wipe_daemon
    fresh_store
    if timed wharf_pull_daemon "$RAW/wharf-pull-daemon-r$RUN.log" "$WHARF" pull "${WHARF_OPTS[@]}" --store "$FRESH_STORE" \
        "$dref:1" "docker-daemon:pulled-r$RUN:1"; then
        checked wharf_pull_daemon check_image "wharf pull docker-daemon:" "pulled-r$RUN:1"
    fi
    rm -rf "$FRESH_STORE"
    # The floor of any docker-daemon: destination: `docker load` (POST /images/load, which
    # wharf also ends in) of the image as `docker save` wrote it (uncompressed layers), from
    # a local file, into an empty daemon. Not a comparison; printed under the table. It also
    # leaves the image in the daemon, without push records, for the next run.
    wipe_daemon
    if timed docker_load "$RAW/docker-load-r$RUN.log" "$DOCKER_CLI" load -i "$WORK/img.tar"; then
        checked docker_load check_image "docker load" "$IMG"
    fi

    # ---- rootfs: umoci unpack (from a local OCI layout) vs wharf (from the registry, and
    # from the same layout)
    local layout=$WORK/layout-r$RUN
    run_quiet "$RAW/skopeo-layout-r$RUN.log" sk copy --src-tls-verify=false --src-no-creds \
        "docker://$dref:1" "oci:$layout:bench"
    LAYOUT_DIGEST=$(tagged_digest "$layout" bench)

    if timed umoci_unpack "$RAW/umoci-unpack-r$RUN.log" "$UMOCI" unpack --image "$layout:bench" "$WORK/bundle-r$RUN"; then
        checked umoci_unpack check_rootfs "umoci unpack" "$WORK/bundle-r$RUN/rootfs"
    fi
    rm -rf "$WORK/bundle-r$RUN"

    fresh_store
    if timed wharf_pull_rootfs "$RAW/wharf-pull-rootfs-r$RUN.log" "$WHARF" pull "${WHARF_OPTS[@]}" --store "$FRESH_STORE" \
        "$dref:1" "rootfs:$WORK/rootfs-pull-r$RUN"; then
        checked wharf_pull_rootfs check_rootfs "wharf pull rootfs:" "$WORK/rootfs-pull-r$RUN"
    fi
    rm -rf "$FRESH_STORE" "$WORK/rootfs-pull-r$RUN"

    fresh_store
    if timed wharf_oci_rootfs "$RAW/wharf-oci-rootfs-r$RUN.log" "$WHARF" copy "${WHARF_OPTS[@]}" --store "$FRESH_STORE" \
        "oci:$layout:bench" "rootfs:$WORK/rootfs-oci-r$RUN"; then
        checked wharf_oci_rootfs check_rootfs "wharf copy oci: rootfs:" "$WORK/rootfs-oci-r$RUN"
    fi
    rm -rf "$FRESH_STORE" "$WORK/rootfs-oci-r$RUN"

    # ---- OCI layout -> registry: each tool into a registry of its own that skopeo has never
    # seen (its blob info cache would otherwise mount blobs it knows from $reg instead of
    # uploading them) and that holds none of the blobs yet.
    local sk_reg sk_pid wh_reg wh_pid
    start_registry "sk-r$RUN"
    sk_reg=$REG_ADDR sk_pid=$REG_PID
    start_registry "wh-r$RUN"
    wh_reg=$REG_ADDR wh_pid=$REG_PID
    if timed skopeo_push "$RAW/skopeo-push-r$RUN.log" sk copy --dest-tls-verify=false --dest-no-creds \
        "oci:$layout:bench" "docker://$sk_reg/bench/sk-r$RUN:1"; then
        checked skopeo_push check_oci_in "skopeo copy oci: docker://" "$sk_reg" "bench/sk-r$RUN"
    fi
    fresh_store
    if timed wharf_push_oci "$RAW/wharf-push-oci-r$RUN.log" "$WHARF" copy "${WHARF_OPTS[@]}" --store "$FRESH_STORE" \
        "oci:$layout:bench" "docker://$wh_reg/bench/wh-r$RUN:1"; then
        checked wharf_push_oci check_oci_in "wharf copy oci: docker://" "$wh_reg" "bench/wh-r$RUN"
    fi
    rm -rf "$FRESH_STORE"
    stop_registry "$sk_pid" "sk-r$RUN"
    stop_registry "$wh_pid" "wh-r$RUN"

    # ---- registry -> OCI layout, both from docker's push, each into a new directory
    if timed skopeo_pull "$RAW/skopeo-pull-r$RUN.log" sk copy --src-tls-verify=false --src-no-creds \
        "docker://$dref:1" "oci:$WORK/sk-oci-r$RUN:bench"; then
        checked skopeo_pull check_oci_out "skopeo copy docker:// oci:" "$WORK/sk-oci-r$RUN" bench "$reg" "bench/docker-r$RUN"
    fi
    rm -rf "$WORK/sk-oci-r$RUN"
    fresh_store
    if timed wharf_pull_oci "$RAW/wharf-pull-oci-r$RUN.log" "$WHARF" copy "${WHARF_OPTS[@]}" --store "$FRESH_STORE" \
        "docker://$dref:1" "oci:$WORK/wh-oci-r$RUN:bench"; then
        checked wharf_pull_oci check_oci_out "wharf copy docker:// oci:" "$WORK/wh-oci-r$RUN" bench "$reg" "bench/docker-r$RUN"
    fi
    rm -rf "$FRESH_STORE" "$WORK/wh-oci-r$RUN" "$layout"

    stop_registry "$reg_pid" "reg-r$RUN"
}

# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "-" }'; }
met() { awk -v r="$1" -v t="$2" 'BEGIN { if (r !~ /^[0-9.]+$/) print "FAILED"; else print (r >= t ? "yes" : "no") }'; }

# ROWS: step | reference tool | reference key | wharf command | wharf key | target ratio
ROWS=(
    "push, gzip|docker push|docker_push|wharf push (gzip -$GZIP_LEVEL)|wharf_push_gzip|3"
    "push, zstd|docker push|docker_push|wharf push --compression zstd|wharf_push_zstd|6"
    "pull into the engine|docker pull|docker_pull|wharf pull docker-daemon:|wharf_pull_daemon|1.5"
    "registry -> rootfs|docker pull|docker_pull|wharf pull rootfs:|wharf_pull_rootfs|4"
    "registry -> rootfs|umoci unpack (local)|umoci_unpack|wharf pull rootfs:|wharf_pull_rootfs|4"
    "OCI layout -> rootfs|umoci unpack|umoci_unpack|wharf copy oci: rootfs:|wharf_oci_rootfs|4"
    "OCI layout -> registry|skopeo copy|skopeo_push|wharf copy oci: docker://|wharf_push_oci|1"
    "registry -> OCI layout|skopeo copy|skopeo_pull|wharf copy docker:// oci:|wharf_pull_oci|1"
)

report() {
    local row step ref rkey wcmd wkey target rs ws r fmt key
    fmt='%-24s %-22s %8s  %-30s %8s %7s %7s  %s\n'
    echo
    echo "wharf client benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "wharf:   $WHARF_VERSION ($WHARF_SOURCE)"
    echo "docker:  $DOCKER_VERSION; $SKOPEO_VERSION; $UMOCI_VERSION"
    echo "image:   $NLAYERS layers, $(mib "$RAW_BYTES") raw ($RAW_BYTES bytes, $EXPECTED_FILES files, $SETUID_FILES setuid);" \
        "docker's gzip $(mib "${PUSHED_BYTES[docker push]:-0}"), wharf gzip -$GZIP_LEVEL $(mib "${PUSHED_BYTES[wharf push gzip]:-0}")," \
        "wharf zstd $(mib "${PUSHED_BYTES[wharf push zstd]:-0}")"
    echo "         raw/gzip $(ratio "$RAW_BYTES" "${PUSHED_BYTES[docker push]:-0}"):1 (the issue's reference image: 1.0 GiB / 326 MiB = 3.1:1)"
    echo "machine: $(nproc) cores; before: $UPTIME_BEFORE"
    echo "         after:  $UPTIME_AFTER"
    echo "other work: ${BUSY_BEFORE}% of CPU busy just before the run, ${BUSY_AFTER}% just after (2 s samples, ours idle)"
    if ((BUSY_BEFORE > 10 || BUSY_AFTER > 10)); then
        echo "WARNING: something else was using the CPU around this run; the numbers compete with it"
    fi
    echo "runs: $RUNS (best of each is shown)"
    echo
    # shellcheck disable=SC2059 # the format is ours
    printf "$fmt" step reference "ref s" wharf "wharf s" ratio target met
    # shellcheck disable=SC2059
    printf "$fmt" ---- --------- ----- ----- ------- ----- ------ ---
    for row in "${ROWS[@]}"; do
        IFS='|' read -r step ref rkey wcmd wkey target <<<"$row"
        rs=$(best "$rkey")
        ws=$(best "$wkey")
        r=$(ratio "$rs" "$ws")
        [[ $r == - ]] || r+=x
        # shellcheck disable=SC2059
        printf "$fmt" "$step" "$ref" "$rs" "$wcmd" "$ws" "$r" ">=${target}x" "$(met "${r%x}" "$target")"
    done
    echo
    local noisy="" r
    for key in docker_push wharf_push_gzip wharf_push_zstd docker_pull wharf_pull_daemon umoci_unpack \
        wharf_pull_rootfs wharf_oci_rootfs skopeo_push wharf_push_oci skopeo_pull wharf_pull_oci docker_save docker_load; do
        for ((r = 1; r <= RUNS; r++)); do
            if ((${OTHER[$key.$r]:-0} > 10)); then
                noisy+="${noisy:+, }$key"
                if ((RUNS > 1)); then noisy+=" run $r"; fi
                noisy+=" (${OTHER[$key.$r]}%)"
            fi
        done
    done
    if [[ -n $noisy ]]; then
        echo "WARNING: other work used more than 10% of the machine during: $noisy;"
        echo "  those times compete with it (see the per-step lines below)"
        echo
    fi
    echo "floors (no comparison; the engine API calls a docker-daemon: transfer goes through):"
    echo "  push from the engine: docker save (GET /images/get; wharf reads the engine's layer store instead when it"
    echo "  can, and falls back to this export) to /dev/null: $(best docker_save) s"
    echo "  pull into the engine: docker load (POST /images/load) of the image's docker-save tar (uncompressed"
    echo "  layers, local file) into an empty daemon: $(best docker_load) s"
    echo
    echo "per step, every run: wall seconds / CPU core-seconds we used (client + dockerd + registry) /"
    echo "other work's share of the machine during the step (incl. writeback of our own writes):"
    for key in docker_push wharf_push_gzip wharf_push_zstd docker_pull wharf_pull_daemon umoci_unpack \
        wharf_pull_rootfs wharf_oci_rootfs skopeo_push wharf_push_oci skopeo_pull wharf_pull_oci docker_save docker_load; do
        printf '  %-18s %s\n' "$key" "$(all_runs "$key")"
    done
    echo
    echo "notes: ratio = reference seconds / wharf seconds. Pushes read the image from the same private dockerd;"
    echo "  docker and wharf push to the same wharf registry (a new one per run), skopeo and wharf each to a fresh"
    echo "  one. Pulls start from a daemon holding no layer and an empty wharf store. umoci unpacks a local OCI"
    echo "  layout (copied from the registry by skopeo, untimed), so 'registry -> rootfs' against umoci does not"
    echo "  count umoci's download; 'OCI layout -> rootfs' is the like-for-like comparison. The docker pull time"
    echo "  is the same measurement in both rows that show it. Page cache not dropped; sync before every step."
    echo "  Runtime $RUNTIME s. Logs: $RAW"
    if ((${#ERRORS[@]})); then
        echo
        echo "FAILED:"
        local e
        for e in "${ERRORS[@]}"; do echo "  $e"; done
    fi
}

# ---------------------------------------------------------------------------------------
main() {
    local t_start tool
    t_start=$(now)
    for tool in jq curl tar gzip zstd sha256sum skopeo; do
        command -v "$tool" >/dev/null || die "$tool is required"
    done
    [[ -x $UMOCI ]] || die "umoci not found at $UMOCI (apt-get install umoci, or set UMOCI=)"
    [[ $(stat -f -c %T "$WORK") != tmpfs ]] || die "BENCH_TMP=$BENCH_TMP is tmpfs; point it at a real disk"
    local need_kib=$(((SIZE_MIB * 7 + 1024) * 1024)) avail_kib
    avail_kib=$(df -Pk "$WORK" | awk 'NR==2 {print $4}')
    ((avail_kib > need_kib)) || die "need ~$((need_kib / 1024)) MiB free under $BENCH_TMP, have $((avail_kib / 1024))"
    log "scratch $WORK"
    # Our own copy of the binary: a rebuild in the shared target dir during the run must not
    # swap it under us.
    cp "$WHARF" "$WORK/wharf"
    WHARF_SOURCE="$WHARF (built $(date -r "$WHARF" '+%F %T'))"
    WHARF=$WORK/wharf

    UPTIME_BEFORE=$(uptime)
    BUSY_BEFORE=$(cpu_busy_pct)
    log "before: $UPTIME_BEFORE; CPU busy with other work: $BUSY_BEFORE%"
    WHARF_VERSION=$("$WHARF" --version)
    SKOPEO_VERSION=$(skopeo --version)
    UMOCI_VERSION=$("$UMOCI" --version)

    setup_skopeo
    start_dockerd wharf-bench
    DOCKER_VERSION=$("$DOCKER_CLI" version -f 'server {{.Server.Version}}, client {{.Client.Version}}')
    build_bench_image

    for ((RUN = 1; RUN <= RUNS; RUN++)); do one_run; done

    wipe_daemon
    UPTIME_AFTER=$(uptime)
    BUSY_AFTER=$(cpu_busy_pct)
    RUNTIME=$(secs_since "$t_start")
    report | tee "$RESULT"
    echo "results: $RESULT"
}

main "$@"

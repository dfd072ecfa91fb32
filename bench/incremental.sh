#!/usr/bin/env bash
# bench/incremental.sh: the push CI lives in, after a one-line change: wharf push vs docker push of
# v2 (v1 plus one new layer) when v1 is already on the registry, timed in the same run.
#
# Usage:
#   cargo build --release -p wharf && bench/incremental.sh
#   SIZE_MIB=256 bench/incremental.sh
#
# Knobs (environment):
#   WHARF      wharf binary (client and registry)     (default ./target/release/wharf)
#   SIZE_MIB   v1's raw size, MiB                      (default 1024)
#   LAYERS     v1's layers                             (default 6)
#   NEW_MIB    the new layer of v2, MiB                (default 4)
#   NEW_KIND   its content: text (Perl and Python sources from /usr, concatenated, as an application's
#              code would be) or random (incompressible: compression at its slowest) (default text)
#   BENCH_TMP  parent of the scratch dir (a real disk) (default /var/tmp)
#   OUT_DIR    results and raw logs                    (default bench/out, gitignored)
#   ROUNDS     same-machine rounds, each with its own v2 (a new layer of other content); medians reported
#              (default 5)
#   WHARF_LOG  RUST_LOG for the timed wharf pushes, to see where their time goes (default: none)
#
# v1 is bench/client.sh's image (bench/image.sh: LAYERS layers of real files, SIZE_MIB in all);
# v2 is `FROM v1` + `COPY new /bench/new`, built in a private dockerd. Each tool pushes v1 to a
# repository of its own (untimed), with flags a new user would pass (none), then:
#   same machine   docker push v2                 vs  wharf push docker-daemon:v2 (the content
#                  (its v2metadata knows v1's         store that pushed v1: its layer record)
#                  layers)
#   fresh runner   docker push v2 after its push  vs  wharf push docker-daemon:v2 with a new
#                  history is wiped (dockerd          content store (only the registry's layer
#                  restarted without image/*/         index to go by), to a new repository
#                  distribution), to a new repo
# Every push is checked after its timing (the registry has the manifest; the image ID of what
# wharf pushed is v2's). Bytes sent by wharf: the compressed layers it sent (its --json
# report); docker: the layers it reports "Pushed".
#
# Targets (issue 18): same machine >= 3x docker; fresh runner >= 10x docker and bytes sent
# <= 1.1x the new layer.
set -euo pipefail

for var in WHARF OUT_DIR BENCH_TMP; do
    if [[ -n ${!var:-} ]]; then printf -v "$var" '%s' "$(realpath -m "${!var}")"; fi
done
cd "$(dirname "$0")/.."
WHARF=${WHARF:-$PWD/target/release/wharf}
SIZE_MIB=${SIZE_MIB:-1024}
LAYERS=${LAYERS:-6}
NEW_MIB=${NEW_MIB:-4}
ROUNDS=${ROUNDS:-5}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
OUT_DIR=${OUT_DIR:-bench/out}

# shellcheck source-path=SCRIPTDIR source=../tests/e2e/lib.sh disable=SC1091
. tests/e2e/lib.sh
# shellcheck source=image.sh disable=SC1091
. bench/image.sh

log() { printf '[bench] %s\n' "$*" >&2; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "-" }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

export NO_PROXY='*' no_proxy='*'
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
unset RUST_LOG WHARF_STORE WHARF_CONFIG WHARF_SRC_CREDS WHARF_DEST_CREDS

mkdir -p "$OUT_DIR" "$BENCH_TMP"
OUT_DIR=$(realpath "$OUT_DIR")
RAW=$OUT_DIR/incremental-raw
rm -rf "$RAW"
mkdir -p "$RAW"
RESULT=$OUT_DIR/incremental-$(date +%Y%m%d-%H%M%S).txt
TMPDIR=$(realpath "$BENCH_TMP") e2e_init bench-incremental
IMG=bench/app:1
V2=bench/app:2

REG_N=0
start_registry() {
    REG_N=$((REG_N + 1))
    local out=$WORK/reg-$REG_N.out
    : >"$out"
    "$WHARF" serve --listen 127.0.0.1:0 --root "$WORK/reg-$REG_N" --log warn >"$out" 2>"$RAW/reg-$REG_N.log" &
    E2E_PIDS+=($!)
    local i line
    for ((i = 0; i < 100; i++)); do
        line=$(head -n 1 "$out")
        if [[ "$line" =~ listening\ on\ http://(127\.0\.0\.1:[0-9]+)$ ]]; then
            REG=${BASH_REMATCH[1]}
            return 0
        fi
        sleep 0.1
    done
    die "the registry did not start" "$RAW/reg-$REG_N.log"
}

# restart_dockerd_without_history: what a fresh CI runner's engine knows of v2 (its layers, loaded)
# and does not (which registry holds which compressed layer: docker's v2metadata).
restart_dockerd_without_history() {
    stop_pid "$DOCKERD_PID"
    DOCKERD_PID=
    rm -rf "$WORK"/data/image/*/distribution
    start_dockerd wharf-incremental >/dev/null
}

# timed_push NAME LOG CMD...: runs CMD, sets SECS[NAME].
declare -A SECS
timed_push() {
    local name=$1 logf=$2 t
    shift 2
    sync
    t=$(now)
    [[ -z ${WHARF_LOG:-} ]] || echo "timed command starts at $(date -u +%H:%M:%S.%N)" >"$logf.start"
    "$@" >"$logf" 2>&1 || die "$name failed" "$logf"
    SECS[$name]=$(since "$t")
    log "$name: ${SECS[$name]} s"
}

# Bytes wharf sent: its compressed layers (the --json report on the last line of LOG); and the new layer's
# compressed size (the last layer), which is all an incremental push should send.
wharf_sent() { tail -n 1 "$1" | jq '[.layers[] | select(.outcome == "compressed") | .size] | add // 0'; }
new_layer() { tail -n 1 "$1" | jq '.layers[-1].size'; }
wharf_outcomes() { tail -n 1 "$1" | jq -r '[.layers[].outcome] | group_by(.) | map("\(length) \(.[0])") | join(", ")'; }
docker_pushed() { grep -c ': Pushed' "$1" || true; }

check_wharf() {
    local repo=$1 logf=$2 digest config
    digest=$(tail -n 1 "$logf" | jq -r .digest)
    config=$(http --fail -H "Accept: $OCI_MANIFEST" "http://$REG/v2/$repo/manifests/$digest" | jq -r .config.digest)
    # (The log's last line is the --json report.)
    expect_eq "$repo: the pushed image is v2 (its config, hence its ID)" "$config" "$V2_ID"
}

main() {
    local t_start
    t_start=$(now)
    command -v jq >/dev/null || die "jq is required"
    [[ $(stat -f -c %T "$WORK") != tmpfs ]] || die "BENCH_TMP=$BENCH_TMP is tmpfs"
    cp "$WHARF" "$WORK/wharf"
    WHARF_SOURCE="$WHARF (built $(date -r "$WHARF" '+%F %T'))"
    WHARF=$WORK/wharf
    start_dockerd wharf-incremental >/dev/null
    build_bench_image
    mkdir -p "$WORK/ctx2"
    case ${NEW_KIND:-text} in
    random) head -c $((NEW_MIB << 20)) /dev/urandom >"$WORK/new" ;;
    text)
        find /usr/share /usr/lib -xdev -type f \( -name '*.pm' -o -name '*.py' \) -size -1000k 2>/dev/null | LC_ALL=C sort |
            xargs -r cat 2>/dev/null | head -c $((NEW_MIB << 20)) >"$WORK/new" || true
        (($(stat -c %s "$WORK/new") == NEW_MIB << 20)) || die "not $NEW_MIB MiB of sources under /usr"
        ;;
    *) die "NEW_KIND must be text or random" ;;
    esac
    printf 'FROM %s\nCOPY new /bench/new\n' "$IMG" >"$WORK/ctx2/Dockerfile"

    # A registry per tool and case, so that neither tool finds the new layer where the other put it. In each, v1
    # is pushed first (untimed): by the same machine (same engine, same content store), or, for the fresh runner,
    # by the engine before its push history is wiped and by another wharf content store.
    start_registry; local r_docker=$REG
    start_registry; local r_wharf=$REG
    start_registry; local r_docker_fresh=$REG
    start_registry; local r_wharf_fresh=$REG
    local d
    for d in "$r_docker" "$r_docker_fresh"; do
        "$DOCKER_CLI" tag "$IMG" "$d/app:1"
        run_quiet "$RAW/docker-push-v1-$d.log" "$DOCKER_CLI" push "$d/app:1"
    done
    run_quiet "$RAW/wharf-push-v1.log" "$WHARF" push --store "$WORK/store-a" "docker-daemon:$IMG" "$r_wharf/app:1"
    run_quiet "$RAW/wharf-push-v1-fresh.log" "$WHARF" push --store "$WORK/store-other" "docker-daemon:$IMG" "$r_wharf_fresh/app:1"

    # Each registry checks the layer claims of the pushes it took (it decompresses every new layer once, in the
    # background); on this machine that work would compete with the timed pushes, so it is let finish first.
    local r diff_id t_wait
    t_wait=$(now)
    for r in "$r_docker" "$r_wharf" "$r_docker_fresh" "$r_wharf_fresh"; do
        for diff_id in $(image_layers "$IMG"); do
            until [[ $(http -o /dev/null -w '%{http_code}' "http://$r/wharf/v1/layers/$diff_id") == 200 ]]; do
                (($(awk -v a="$t_wait" -v b="$(now)" 'BEGIN { print (b - a > 300) }') == 0)) ||
                    die "$r never answered layer $diff_id"
                sleep 0.2
            done
        done
    done
    log "the registries checked v1's layers in $(since "$t_wait") s"

    # Same machine, ROUNDS times: each round is the one-line change of a CI loop, v2 = v1 + a new layer whose content
    # differs from the last round's by its first line.
    local k docker_rounds=() wharf_rounds=()
    for ((k = 1; k <= ROUNDS; k++)); do
        { echo "round $k"; cat "$WORK/new"; } | head -c $((NEW_MIB << 20)) >"$WORK/ctx2/new"
        V2=bench/app:2-$k
        DOCKER_BUILDKIT=0 run_quiet "$RAW/build2-$k.log" "$DOCKER_CLI" build -t "$V2" "$WORK/ctx2"
        V2_ID=$(image_id "$V2")
        "$DOCKER_CLI" tag "$V2" "$r_docker/app:2-$k"
        "$DOCKER_CLI" tag "$V2" "$r_docker_fresh/app:2"
        timed_push "docker_same_$k" "$RAW/docker-push-v2-$k.log" "$DOCKER_CLI" push "$r_docker/app:2-$k"
        timed_push "wharf_same_$k" "$RAW/wharf-push-v2-$k.log" \
            env ${WHARF_LOG:+RUST_LOG=$WHARF_LOG} "$WHARF" push --store "$WORK/store-a" --json "docker-daemon:$V2" "$r_wharf/app:2-$k"
        REG=$r_wharf check_wharf "app" "$RAW/wharf-push-v2-$k.log"
        docker_rounds+=("${SECS[docker_same_$k]}")
        wharf_rounds+=("${SECS[wharf_same_$k]}")
    done
    SECS[docker_same]=$(median "${docker_rounds[@]}")
    SECS[wharf_same]=$(median "${wharf_rounds[@]}")
    cp "$RAW/wharf-push-v2-$ROUNDS.log" "$RAW/wharf-push-v2.log"
    cp "$RAW/docker-push-v2-$ROUNDS.log" "$RAW/docker-push-v2.log"
    log "v1 $IMG_ID ($(mib "$RAW_BYTES")), v2 (round $ROUNDS) $V2_ID (+$NEW_MIB MiB)"

    # Fresh runner: the engine forgets where its layers went; wharf gets a new content store.
    restart_dockerd_without_history
    timed_push docker_fresh "$RAW/docker-push-fresh.log" "$DOCKER_CLI" push "$r_docker_fresh/app:2"
    timed_push wharf_fresh "$RAW/wharf-push-fresh.log" \
        env ${WHARF_LOG:+RUST_LOG=$WHARF_LOG} "$WHARF" push --store "$WORK/store-b" --json "docker-daemon:$V2" "$r_wharf_fresh/app:2"
    REG=$r_wharf_fresh check_wharf app "$RAW/wharf-push-fresh.log"

    local sent_same sent_fresh
    sent_same=$(wharf_sent "$RAW/wharf-push-v2.log")
    sent_fresh=$(wharf_sent "$RAW/wharf-push-fresh.log")
    {
        echo "bench/incremental.sh, $(date '+%F %T'), $(nproc) cores; wharf: $WHARF_SOURCE"
        echo "v1: $LAYERS layers, $(mib "$RAW_BYTES") raw; v2: v1 + one $NEW_MIB MiB layer (${NEW_KIND:-text}); $("$DOCKER_CLI" version -f 'docker {{.Server.Version}}')"
        printf '%-14s %10s %10s %7s %7s  %s\n' case "docker s" "wharf s" ratio target "wharf: layers; bytes sent"
        echo "same machine, $ROUNDS rounds: docker ${docker_rounds[*]} s; wharf ${wharf_rounds[*]} s (medians below)"
        printf '%-14s %10s %10s %7s %7s  %s\n' "same machine" "${SECS[docker_same]}" "${SECS[wharf_same]}" \
            "$(ratio "${SECS[docker_same]}" "${SECS[wharf_same]}")" ">=3" \
            "$(wharf_outcomes "$RAW/wharf-push-v2.log"); $(mib "$sent_same") ($(ratio "$sent_same" "$(new_layer "$RAW/wharf-push-v2.log")")x the new layer's gzip)"
        printf '%-14s %10s %10s %7s %7s  %s\n' "fresh runner" "${SECS[docker_fresh]}" "${SECS[wharf_fresh]}" \
            "$(ratio "${SECS[docker_fresh]}" "${SECS[wharf_fresh]}")" ">=10" \
            "$(wharf_outcomes "$RAW/wharf-push-fresh.log"); $(mib "$sent_fresh") ($(ratio "$sent_fresh" "$(new_layer "$RAW/wharf-push-fresh.log")")x the new layer's gzip, target <=1.1)"
        echo "docker layers pushed: same machine $(docker_pushed "$RAW/docker-push-v2.log"), fresh runner $(docker_pushed "$RAW/docker-push-fresh.log") of $((LAYERS + 1))"
        echo "run took $(since "$t_start") s; logs in $RAW"
    } | tee "$RESULT"
    ((FAILED == 0)) || exit 1
}

main "$@"

# bench/image.sh: the image the client benchmarks push and pull (sourced by bench/client.sh and
# bench/incremental.sh, after tests/e2e/lib.sh). Needs WORK, RAW, IMG, SIZE_MIB, LAYERS, and the
# callers' log and mib helpers.
# shellcheck shell=bash

# select_files: about SIZE_MIB of regular files from /usr/lib, /usr/share and /usr/bin, a
# regular sample (every k-th file by path) so that each layer gets a mix of binaries,
# libraries and text; each file goes to the layer with the fewest bytes so far. Writes
# $WORK/list.N (one path relative to / a line) for N = 1..LAYERS.
select_files() {
    # Paths relative to / (tar -C / reads them): %P is relative to the starting point. A
    # path with a newline or tab in it (none in a Debian /usr) is left out: lists are lines.
    local top
    : >"$WORK/candidates"
    for top in usr/lib usr/share usr/bin; do
        find "/$top" -xdev -type f -size +0 -size -65M -readable ! -name "*"$'\n'"*" ! -name "*"$'\t'"*" \
            -printf "%s\t%m\t$top/%P\n" 2>/dev/null >>"$WORK/candidates" || true
    done
    LC_ALL=C sort -t $'\t' -k3 "$WORK/candidates" |
        awk -F'\t' -v target=$((SIZE_MIB * 1048576)) -v layers="$LAYERS" -v dir="$WORK" '
            # Already-compressed formats would make the image less compressible than a real one.
            tolower($3) ~ /\.(gz|tgz|xz|bz2|zst|lz4|zip|jar|whl|7z|png|jpe?g|gif|ico|webp|woff2?|svgz)$/ { next }
            { n++; size[n] = $1; path[n] = $3; total += $1
              # setuid/setgid programs (mount, su, ...) all go into layer 1: `docker import`
              # keeps those bits (COPY does not), so unpackers must restore them.
              suid[n] = (length($2) == 4 && substr($2, 1, 1) ~ /[234567]/) }
            function take(k, l) { bytes[l] += size[k]; count[l]++; taken += size[k]; print path[k] > (dir "/list." l) }
            END {
                taken = 0
                for (l = 1; l <= layers; l++) { bytes[l] = 0; count[l] = 0; printf "" > (dir "/list." l) }
                for (k = 1; k <= n; k++) if (suid[k]) take(k, 1)
                # Every k-th other file, k a little below total/target so the sample reaches
                # the target before the end of the list.
                stride = (total - taken) / (target - taken) * 0.97; if (stride < 1) stride = 1
                for (k = 1; k <= n && taken < target; k++) {
                    if (suid[k] || int(k / stride) == int((k - 1) / stride)) continue
                    best = 1
                    for (l = 2; l <= layers; l++) if (bytes[l] < bytes[best]) best = l
                    take(k, best)
                }
                for (l = 1; l <= layers; l++) printf "layer %d: %d files, %.0f MiB\n", l, count[l], bytes[l] / 1048576
                if (taken < target) printf "warning: only %.0f MiB of candidate files\n", taken / 1048576
            }' >&2
}

# build_bench_image: layer 1 (docker import) = /etc/motd, /etc/os-release and /bench/l1;
# layers 2..LAYERS = COPY bench/lN /bench/lN. Provides IMG_ID, NLAYERS, RAW_BYTES, and
# $WORK/expected.sha256 / expected.mode: every regular file the image holds (content, mode).
build_bench_image() {
    local l
    select_files
    mkdir -p "$WORK/base/etc" "$WORK/base/bench/l1" "$WORK/ctx/bench"
    echo "wharf client benchmark" >"$WORK/base/etc/motd"
    echo "ID=wharf-bench" >"$WORK/base/etc/os-release"
    tar -C / --verbatim-files-from --no-recursion -cf - -T "$WORK/list.1" | tar -C "$WORK/base/bench/l1" -xf -
    for ((l = 2; l <= LAYERS; l++)); do
        mkdir -p "$WORK/ctx/bench/l$l"
        tar -C / --verbatim-files-from --no-recursion -cf - -T "$WORK/list.$l" | tar -C "$WORK/ctx/bench/l$l" -xf -
    done
    tar -C "$WORK/base" --numeric-owner --owner=0 --group=0 -cf "$WORK/base.tar" .
    run_quiet "$RAW/import.log" "$DOCKER_CLI" import "$WORK/base.tar" bench/base:1
    rm -f "$WORK/base.tar"
    {
        echo "FROM bench/base:1"
        for ((l = 2; l <= LAYERS; l++)); do echo "COPY bench/l$l /bench/l$l"; done
    } >"$WORK/ctx/Dockerfile"
    # The legacy builder (see lib.sh's build_image): no BuildKit, no container, no network.
    DOCKER_BUILDKIT=0 run_quiet "$RAW/build.log" "$DOCKER_CLI" build -t "$IMG" "$WORK/ctx"
    IMG_ID=$(image_id "$IMG")
    IMG_DIFF_IDS=$(image_layers "$IMG" | jq -Rsc 'split("\n") | map(select(. != ""))')
    NLAYERS=$(image_layers "$IMG" | wc -l)
    RAW_BYTES=$("$DOCKER_CLI" image inspect -f '{{.Size}}' "$IMG")
    expect_eq "built image has $LAYERS layers" "$NLAYERS" "$LAYERS"
    # What an unpacked rootfs must hold, from the files the image was built from.
    {
        (cd "$WORK/base" && find . -type f -printf '%P\0' | xargs -0r sha256sum --)
        (cd "$WORK/ctx" && find bench -type f -print0 | xargs -0r sha256sum --)
    } | LC_ALL=C sort >"$WORK/expected.sha256"
    # Docker's legacy builder stores COPYed files without their setuid/setgid bits (checked
    # with docker 20.10: a 4755 file in the context is 755 in the layer); `docker import`
    # keeps them. So: the import layer's modes as they are, the COPY layers' with 06000 off.
    {
        (cd "$WORK/base" && find . -type f -printf '%m %P\n')
        (cd "$WORK/ctx" && find bench -type f -printf '%m %p\n') |
            awk '{ m = $1; if (length(m) == 4) { d = substr(m, 1, 1) % 2; m = (d ? d : "") substr(m, 2) }
                   sub(/^[0-7]+/, m); print }'
    } | LC_ALL=C sort >"$WORK/expected.mode"
    SETUID_FILES=$(awk 'length($1) == 4 && substr($1, 1, 1) ~ /[234567]/' "$WORK/expected.mode" | wc -l)
    EXPECTED_FILES=$(wc -l <"$WORK/expected.sha256")
    EXPECTED_BYTES=$({
        (cd "$WORK/base" && find . -type f -printf '%s\n')
        (cd "$WORK/ctx" && find bench -type f -printf '%s\n')
    } | awk '{ s += $1 } END { printf "%.0f", s }')
    rm -rf "$WORK/base" "$WORK/ctx" "$WORK"/list.* "$WORK/candidates"
    log "image $IMG: $IMG_ID, $NLAYERS layers, $(mib "$RAW_BYTES") raw; $EXPECTED_FILES files" \
        "($SETUID_FILES setuid/setgid), $(mib "$EXPECTED_BYTES")"
}


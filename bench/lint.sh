#!/usr/bin/env bash
# Lints a 1,000-file corpus with `wharf lint` and prints the time (target: under 1 s).
# The corpus is the files of crates/wharf-dockerfile/tests/corpus, copied round-robin with a varying
# suffix so no two files are byte-identical. Uses target/debug/wharf unless WHARF is set (build it first:
# `cargo build -p wharf`). Usage: bench/lint.sh [N_FILES]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
WHARF=${WHARF:-target/debug/wharf}
[[ -x $WHARF ]] || { echo "build first: cargo build -p wharf" >&2; exit 1; }
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
mapfile -t SRC < <(ls crates/wharf-dockerfile/tests/corpus/*.Dockerfile)
for ((i = 0; i < N; i++)); do
  f=${SRC[i % ${#SRC[@]}]}
  { cat "$f"; printf 'LABEL bench.copy="%d"\n' "$i"; } >"$DIR/f$i.Dockerfile"
done
bytes=$(cat "$DIR"/*.Dockerfile | wc -c)
start=$(date +%s.%N)
"$WHARF" lint --preset aliyun --format json "$DIR" >"$DIR/out.json" || true
end=$(date +%s.%N)
findings=$(grep -c '"rule"' "$DIR/out.json" || true)
printf 'wharf lint: %d files, %d bytes, %d findings in %.3f s\n' "$N" "$bytes" "$findings" "$(echo "$end - $start" | bc -l)"

#!/usr/bin/env bash
# Build check for `wharf fix` with a real Docker engine, offline: the base image is `docker import`ed from a
# rootfs of the host's dash and a few coreutils (with their libraries), and a stub `npm` that "installs" from
# package.json. For each Dockerfile below it
#   1. runs `wharf fix --write` (the naive file has `COPY . .` before `npm ci`, several RUNs, ADD for files),
#   2. builds the fixed file (it must still build),
#   3. changes a source file only and builds again: the `RUN npm ci` layer must come from the cache.
# It starts a private dockerd (own socket, data root, exec root, containerd namespace; no bridge or iptables)
# and stops only that daemon. Skips (exit 0) when dockerd is not installed. Needs root.
# Usage: crates/wharf-dockerfile/tests/docker-build-check.sh   (build first: cargo build -p wharf)
set -euo pipefail
cd "$(dirname "$0")/../../.."
WHARF=${WHARF:-$PWD/target/debug/wharf}
DOCKERD=${DOCKERD:-/usr/sbin/dockerd}
[[ -x $WHARF ]] || { echo "build first: cargo build -p wharf" >&2; exit 1; }
if [[ ! -x $DOCKERD ]] || ! command -v docker >/dev/null; then
    echo "SKIP: dockerd or docker client not installed"
    exit 0
fi
WORK=$(mktemp -d /tmp/wharf-lint-docker.XXXXXX)
DOCKERD_PID=
cleanup() {
    if [[ -n $DOCKERD_PID ]]; then
        kill "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    [[ -n ${KEEP:-} ]] || rm -rf "$WORK" 2>/dev/null || true
}
trap cleanup EXIT
export DOCKER_HOST="unix://$WORK/docker.sock" DOCKER_BUILDKIT=0 DOCKER_CONFIG="$WORK/cli"
mkdir -p "$WORK/cli"
echo '{}' >"$WORK/daemon.json"
"$DOCKERD" --config-file "$WORK/daemon.json" --data-root "$WORK/data" --exec-root "$WORK/exec" \
    --pidfile "$WORK/dockerd.pid" --host "$DOCKER_HOST" \
    --containerd-namespace wharf-lint --containerd-plugins-namespace wharf-lint-plugins \
    --iptables=false --ip-forward=false --bridge=none >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 300); do docker info >/dev/null 2>&1 && break; kill -0 "$DOCKERD_PID" || { tail "$WORK/dockerd.log"; exit 1; }; sleep 0.1; done
docker info >/dev/null

# Base image: dash as /bin/sh, cat, mkdir, ls, and a stub npm.
R=$WORK/rootfs
mkdir -p "$R/bin" "$R/usr/bin" "$R/tmp" "$R/etc"
for b in /bin/dash /bin/cat /bin/mkdir /bin/ls /bin/sed; do
    cp "$b" "$R/bin/"
    ldd "$b" | grep -o '/[^ ]*' | while read -r lib; do mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"; done
done
ln -s dash "$R/bin/sh"
cat >"$R/usr/bin/npm" <<'EOF'
#!/bin/sh
# stub: "installs" the dependencies listed in package.json
mkdir -p node_modules && cat package.json >node_modules/.installed && echo "npm: installed from package.json"
EOF
chmod +x "$R/usr/bin/npm"
tar -C "$R" -cf "$WORK/base.tar" .
docker import "$WORK/base.tar" wharf-lint-base:1 >/dev/null

fail=0
check() { # NAME: build, fix, build, touch source, build; the install layer must be cached
    local name=$1 ctx=$WORK/$1
    "$WHARF" fix --write "$ctx/Dockerfile" 2>"$WORK/$name.fix.log"
    echo "--- $name: fixed Dockerfile"
    cat "$ctx/Dockerfile"
    docker build -q -t "wharf-lint-$name:1" "$ctx" >/dev/null 2>"$WORK/$name.build1.log" || { echo "FAIL $name: fixed file does not build"; cat "$WORK/$name.build1.log"; fail=1; return; }
    echo "// changed $(date +%s%N)" >>"$ctx/index.js"
    docker build -t "wharf-lint-$name:2" "$ctx" >"$WORK/$name.build2.log" 2>&1 || { echo "FAIL $name: second build"; fail=1; return; }
    if awk '/RUN npm ci/ { getline; print; exit }' "$WORK/$name.build2.log" | grep -q 'Using cache'; then
        echo "ok   $name: builds, and after a source-only change \`RUN npm ci\` is reused from the cache"
    else
        echo "FAIL $name: the install layer was rebuilt after a source-only change"; cat "$WORK/$name.build2.log"; fail=1
    fi
    [[ -z $("$WHARF" fix --diff "$ctx/Dockerfile" 2>/dev/null) ]] || { echo "FAIL $name: second fix changes the file"; fail=1; }
}

mk() { mkdir -p "$WORK/$1"; echo '{"name":"app","dependencies":{}}' >"$WORK/$1/package.json"; echo '{}' >"$WORK/$1/package-lock.json"; echo 'console.log(1)' >"$WORK/$1/index.js"; mkdir -p "$WORK/$1/.git"; echo x >"$WORK/$1/.git/HEAD"; }

mk node
cat >"$WORK/node/Dockerfile" <<'EOF'
FROM wharf-lint-base:1
WORKDIR /app
COPY . .
RUN npm ci
RUN cat node_modules/.installed
RUN ls /app
CMD ["/bin/sh"]
EOF
check node

mk multistage
cat >"$WORK/multistage/Dockerfile" <<'EOF'
FROM wharf-lint-base:1 AS deps
WORKDIR /src
COPY . /src
RUN npm ci

FROM deps AS test
RUN cat /src/node_modules/.installed

FROM wharf-lint-base:1
ADD index.js /app/index.js
COPY --from=deps /src/node_modules /app/node_modules
EOF
check multistage

[[ -f $WORK/node/.dockerignore ]] && echo "ok   .dockerignore written: $(tr '\n' ' ' <"$WORK/node/.dockerignore")"
exit $fail

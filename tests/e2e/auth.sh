#!/usr/bin/env bash
# End-to-end test: a real Docker engine and skopeo against wharf in token mode ([auth] mode = "token", wharf issuing
# the tokens at /auth/token): `docker login`, push and pull follow the Bearer challenges unchanged.
#
# Users (htpasswd, bcrypt): alice may push and pull team/* and public/**; bob may only pull team/*; anonymous may
# pull public/**. Checked: pushes need a login; bob is denied (403) on push but pulls; a wrong password fails login;
# anonymous pulls public/** only; skopeo with credentials. Private wharf and dockerd on 127.0.0.1 only (docker
# treats 127.0.0.0/8 as an insecure, plain-HTTP registry); nothing is fetched from anywhere else.
#
# Usage: WHARF=/path/to/wharf tests/e2e/auth.sh
#   WHARF       wharf binary (default: target/release/wharf if built, else target/debug/wharf)
#   DOCKER_CLI  docker client to use (default: docker from PATH)
#   DOCKERD     docker daemon to start (default: /usr/sbin/dockerd from the docker.io package)
#   E2E_KEEP=1  keep the scratch directory (logs, daemon data) for inspection
set -euo pipefail

# The shared helpers (lib.sh says what each needs and provides). `shellcheck -x` follows it.
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
e2e_init e2e-auth

# Written by `htpasswd -nbB alice wonderland` and `htpasswd -nbB bob builder` (literal: no expansion).
# shellcheck disable=SC2016
USERS='alice:$2y$05$DPkd05OuxG7MQ/pWDC6RMONuiRyQKBSOi1uSMDzTZPxaCsOkYRR0O
bob:$2y$05$F7/iHujTuok6c4Xch.01guz/wvmkj4l64nvzUYz/zfWjRxTK3bgyu'

# A test-only token signing key (`openssl ecparam -genkey -name prime256v1 -noout`).
TOKEN_KEY='-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIKCVYCINuzoaGaX61Jo1ljJA/ykVTFbuPTs6pR+ehvJuoAoGCCqGSM49
AwEHoUQDQgAEjAre8T532ksvOISrmpLiS9g6Y1+7zeEW/zjpoWcFdJD3yipZbfvv
UKGvHfjQGOBGvtDFECUz7FuKUmoib2WLpQ==
-----END EC PRIVATE KEY-----'

write_config() {
    printf '%s\n' "$USERS" >"$WORK/users.htpasswd"
    printf '%s\n' "$TOKEN_KEY" >"$WORK/token.key"
    cat >"$WORK/auth.toml" <<EOF
[auth]
mode = "token"
htpasswd = "$WORK/users.htpasswd"

[[auth.rules]]
subjects = ["alice"]
repositories = ["team/*", "public/**"]
actions = ["pull", "push"]

[[auth.rules]]
subjects = ["bob"]
repositories = ["team/*"]
actions = ["pull"]

[[auth.rules]]
subjects = ["anonymous"]
repositories = ["public/**"]
actions = ["pull"]

[auth.token]
signing_key = "$WORK/token.key"
EOF
}

# expect_fail NAME LOG PATTERN CMD...: CMD fails and its output matches PATTERN (extended regex).
expect_fail() {
    local name=$1 log=$2 pattern=$3
    shift 3
    if "$@" >"$log" 2>&1; then
        fail "$name: succeeded"
    elif grep -qiE "$pattern" "$log"; then
        pass "$name"
    else
        fail "$name: output does not match /$pattern/: $(tail -n 3 "$log")"
    fi
}

login() { printf '%s' "$2" | "$DOCKER_CLI" login "$REGISTRY" -u "$1" --password-stdin; }

main() {
    write_config
    start_wharf wharf --config "$WORK/auth.toml"
    REGISTRY=$WHARF_STARTED_ADDR
    start_dockerd wharf-e2e-auth --insecure-registry "$REGISTRY"

    local app=$REGISTRY/team/app:v1 public=$REGISTRY/public/app:v1
    build_image "$app" e2e 4
    run "$WORK/tag.log" "$DOCKER_CLI" tag "$app" "$public"

    # --- the challenge clients follow
    local challenge
    challenge=$(http -D - -o /dev/null "http://$REGISTRY/v2/" | tr -d '\r' | sed -n 's/^[Ww]ww-[Aa]uthenticate: //p')
    expect_eq "GET /v2/ challenges with wharf's token endpoint" "$challenge" \
        "Bearer realm=\"http://$REGISTRY/auth/token\",service=\"wharf\""

    # --- no login: no push
    # Docker words a 401 on push as "denied: requested access to the resource is denied" too; the registry's own
    # answer to an anonymous caller is 401 (log in), never 403.
    expect_fail "anonymous push is refused" "$WORK/push-anon.log" 'denied|unauthorized|authentication required' \
        "$DOCKER_CLI" push "$app"
    expect_eq "anonymous push got 401s, no 403" \
        "$(count_lines 'uploads/ status=401' "$WORK/wharf.log") $(count_lines 'status=403' "$WORK/wharf.log")" \
        "$(count_lines 'uploads/ status=401' "$WORK/wharf.log") 0"

    # --- logins
    expect_fail "docker login with a wrong password fails" "$WORK/login-bad.log" 'unauthorized|incorrect' \
        login alice wrong
    run "$WORK/login-bob.log" login bob builder
    if grep -q 'Login Succeeded' "$WORK/login-bob.log"; then pass "docker login bob"; else fail "docker login bob"; fi

    # --- bob may pull team/* but not push: denied
    expect_fail "bob's push is denied" "$WORK/push-bob.log" 'denied' "$DOCKER_CLI" push "$app"

    # --- alice pushes
    run "$WORK/login-alice.log" login alice wonderland
    run "$WORK/push-alice.log" "$DOCKER_CLI" push "$app"
    local digest
    digest=$(push_digest "$WORK/push-alice.log")
    [[ -n "$digest" ]] || die "no digest in docker push output" "$WORK/push-alice.log"
    pass "alice pushes team/app"
    run "$WORK/push-public.log" "$DOCKER_CLI" push "$public"
    expect_eq "alice pushes public/app: same digest" "$(push_digest "$WORK/push-public.log")" "$digest"
    expect_eq "alice's push to public/app mounts every layer from team/app (she may pull it)" \
        "$(count_lines ': Mounted from team/app$' "$WORK/push-public.log")" "$(image_layers "$app" | wc -l)"

    # --- forget everything locally; anonymous pulls public/** only
    run "$WORK/logout.log" "$DOCKER_CLI" logout "$REGISTRY"
    run "$WORK/rmi.log" "$DOCKER_CLI" rmi "$app" "$public" e2e-base:local
    run "$WORK/pull-public.log" "$DOCKER_CLI" pull "$public"
    expect_eq "anonymous pull of public/app has the pushed digest" "$(pull_digest "$WORK/pull-public.log")" "$digest"
    expect_fail "anonymous pull of team/app is refused" "$WORK/pull-anon.log" \
        'unauthorized|authentication required|denied|not found' "$DOCKER_CLI" pull "$app"

    # --- bob pulls team/app
    run "$WORK/login-bob2.log" login bob builder
    run "$WORK/pull-bob.log" "$DOCKER_CLI" pull "$app"
    expect_eq "bob pulls team/app with the pushed digest" "$(pull_digest "$WORK/pull-bob.log")" "$digest"
    check_pulled_content "$app" "bob's pull"

    # --- skopeo with credentials: inspect works for bob, a copy into team/* is denied
    setup_skopeo
    local inspected
    inspected=$(sk inspect --tls-verify=false --creds bob:builder "docker://$app" | jq -r .Digest)
    expect_eq "skopeo inspect as bob" "$inspected" "$digest"
    expect_fail "skopeo copy as bob into team/copy is denied" "$WORK/skopeo-bob.log" 'denied' \
        sk copy --src-tls-verify=false --dest-tls-verify=false --src-creds bob:builder --dest-creds bob:builder \
        "docker://$app" "docker://$REGISTRY/team/copy:v1"
    run "$WORK/skopeo-alice.log" sk copy --src-tls-verify=false --dest-tls-verify=false \
        --src-creds alice:wonderland --dest-creds alice:wonderland "docker://$app" "docker://$REGISTRY/team/copy:v1"
    expect_eq "skopeo copy as alice into team/copy" \
        "$(sk inspect --tls-verify=false --creds alice:wonderland "docker://$REGISTRY/team/copy:v1" | jq -r .Digest)" \
        "$digest"
}

main "$@"

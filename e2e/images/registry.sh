#!/usr/bin/env bash
# registry.sh — the project's test registry: Debian's docker-registry on 127.0.0.1 holding the test
# images of build.sh (IMAGES.md) under their original repository paths.
#
#   e2e/images/registry.sh start [PORT]        start it on 127.0.0.1:PORT (default 5100) unless it is up,
#                                              push the images when they are missing or their definitions
#                                              changed, print the address last on stdout
#   e2e/images/registry.sh start-auth [PORT]   the same for a second registry (default port 5101) that
#                                              requires basic auth, user "berth", password "berth-e2e-pull",
#                                              holding a few images (AUTH_IMAGES) for imagePullSecret tests
#   e2e/images/registry.sh stop [PORT]         stop the registry on PORT (default: every one started here)
#   e2e/images/registry.sh address [PORT]      print the address if a registry answers there, else exit 1
#
# Port 5000 is left alone on purpose: Kubernetes' e2e registry specs run a registry pod with hostPort
# 5000. Data, logs and image builds live under ${BERTH_IMAGES_CACHE:-/var/cache/berth-images}, outside
# the repo, so later starts on the same machine are quick. docker-registry 2.8 accepts basic auth over
# plain HTTP, which is why the auth registry needs no TLS. Missing Debian packages are installed with
# apt-get. It must never listen beyond 127.0.0.1.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${BERTH_IMAGES_CACHE:-/var/cache/berth-images}
export BERTH_IMAGES_CACHE=$CACHE
AUTH_USER=berth
AUTH_PASSWORD=berth-e2e-pull
# What the auth registry holds: a shell image, and agnhost under the path Kubernetes' private-registry
# specs use (gcr.io/k8s-authenticated-test/agnhost).
AUTH_IMAGES="e2e-test-images/busybox:1.37.0-1 k8s-authenticated-test/agnhost:2.6"

say() { echo "registry.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

need_packages() {
    local missing=()
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    command -v curl >/dev/null || missing+=(curl)
    command -v htpasswd >/dev/null || missing+=(apache2-utils)
    command -v flock >/dev/null || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# up ADDR [CREDS]: whether a registry answers at ADDR (with CREDS when it wants them)
up() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' ${2:+-u "$2"} "http://$1/v2/" 2>/dev/null) || true
    [ "$code" = 200 ]
}

# serve PORT [HTPASSWD]: start docker-registry on 127.0.0.1:PORT with storage in $CACHE/registry-PORT
serve() {
    local port=$1 htpasswd=${2:-} dir=$CACHE/registry-$1 auth=
    mkdir -p "$dir/data"
    if [ -n "$htpasswd" ]; then
        auth="auth: { htpasswd: { realm: berth-e2e, path: $htpasswd } }"
    fi
    cat >"$dir/config.yml" <<EOF
version: 0.1
log: { level: warn }
storage: { filesystem: { rootdirectory: $dir/data }, delete: { enabled: true } }
http: { addr: 127.0.0.1:$port }
$auth
EOF
    # 8>&-: the registry must not inherit the start lock.
    nohup docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 </dev/null 8>&- &
    echo $! >"$dir/pid"
}

# start PORT [CREDS]: the registry on PORT up and filled; prints its address
start() {
    local port=$1 creds=${2:-} reg=127.0.0.1:$1 dir=$CACHE/registry-$1 key htpasswd=
    need_packages
    mkdir -p "$dir"
    exec 8>"$dir/lock"
    flock 8 # one start per port at a time: the second finds it up and filled
    if ! up "$reg" "$creds"; then
        if [ -n "$creds" ]; then
            htpasswd=$dir/htpasswd
            htpasswd -Bbn "${creds%%:*}" "${creds#*:}" >"$htpasswd"
        fi
        serve "$port" "$htpasswd"
        for _ in $(seq 1 100); do
            up "$reg" "$creds" && break
            kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
            sleep 0.1
        done
        up "$reg" "$creds" || die "the registry on $reg did not start; see $dir/registry.log: $(tail -3 "$dir/registry.log")"
    fi
    # Push when the definitions changed since the last push here (or the storage was wiped).
    key=$("$HERE/build.sh" --key)
    if [ "$(cat "$dir/pushed" 2>/dev/null)" != "$key" ] ||
        ! curl -fsS ${creds:+-u "$creds"} -o /dev/null "http://$reg/v2/e2e-test-images/busybox/manifests/1.37.0-1" \
            -H 'Accept: application/vnd.oci.image.manifest.v1+json' 2>/dev/null; then
        rm -f "$dir/pushed"
        if [ -n "$creds" ]; then
            # shellcheck disable=SC2086 # one word per image
            "$HERE/build.sh" --creds "$creds" "$reg" $AUTH_IMAGES >&2
        else
            "$HERE/build.sh" "$reg" >&2
        fi
        echo "$key" >"$dir/pushed"
    fi
    echo "$reg"
}

stop() {
    local dirs pid d
    if [ -n "${1:-}" ]; then dirs=("$CACHE/registry-$1"); else dirs=("$CACHE"/registry-*); fi
    for d in "${dirs[@]}"; do
        [ -f "$d/pid" ] || continue
        pid=$(cat "$d/pid")
        # Only a docker-registry this script started (the pid file may be stale after a reboot).
        if grep -q docker-registry "/proc/$pid/cmdline" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$d/pid"
    done
}

case "${1:-}" in
start) start "${2:-5100}" ;;
start-auth) start "${2:-5101}" "$AUTH_USER:$AUTH_PASSWORD" ;;
stop) stop "${2:-}" ;;
address)
    if up "127.0.0.1:${2:-5100}" || up "127.0.0.1:${2:-5100}" "$AUTH_USER:$AUTH_PASSWORD"; then
        echo "127.0.0.1:${2:-5100}"
    else
        exit 1
    fi
    ;;
*)
    echo "usage: registry.sh start [PORT] | start-auth [PORT] | stop [PORT] | address [PORT]" >&2
    exit 2
    ;;
esac

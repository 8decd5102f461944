#!/bin/bash
# berth-critest.sh — a throwaway berthd set up for the CRI conformance suite (critest).
#
#   BERTH_TEST_REGISTRY=127.0.0.1:5100 berth-critest.sh start   start berthd, print its socket path
#   berth-critest.sh stop                                        stop it and remove its root and state
#   BERTH_TEST_REGISTRY=127.0.0.1:5100 berth-critest.sh run CMD… start, run CMD with $BERTH_SOCK set, stop
#
# Its registry mirrors (containerd's certs.d layout) send registry.k8s.io, k8s.gcr.io, gcr.io, docker.io,
# quay.io and public.ecr.aws to http://$BERTH_TEST_REGISTRY, which must hold look-alikes of the images critest
# pulls under their original paths (e2e/images/registry.sh runs one; e2e/images/IMAGES.md lists them).
# Everything lives under one temporary directory ($BERTH_CRITEST_DIR, default /tmp/berth-critest),
# plus the pods' bridge and its FORWARD drop rule ($BERTH_CRITEST_SUBNET, default 10.86.0.0/16), both
# removed by stop.
# berthd is taken from $BERTHD, else the newer of target/{release,debug}/berthd of this checkout, else PATH.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${BERTH_CRITEST_DIR:-/tmp/berth-critest}
PIDFILE=$DIR/berthd.pid
SOCK=$DIR/state/berth.sock
# The pod network of critest runs.
SUBNET=${BERTH_CRITEST_SUBNET:-10.86.0.0/16}
BRIDGE=${BERTH_CRITEST_BRIDGE:-berthct0}

find_berthd() {
  if [ -n "${BERTHD:-}" ]; then echo "$BERTHD"; return; fi
  # The most recently built of the release and debug binaries.
  local b
  b=$(ls -t "$HERE/../target/release/berthd" "$HERE/../target/debug/berthd" 2>/dev/null | head -1)
  [ -n "$b" ] && [ -x "$b" ] && { echo "$b"; return; }
  command -v berthd || { echo "berthd not found: build it (cargo build) or set BERTHD" >&2; exit 1; }
}

start() {
  local reg=${BERTH_TEST_REGISTRY:?set BERTH_TEST_REGISTRY to the registry holding critest images, e.g. 127.0.0.1:5100 from e2e/images/registry.sh start}
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then echo "$SOCK"; return; fi
  local berthd; berthd=$(find_berthd)
  mkdir -p "$DIR/certs.d" "$DIR/net.d"
  for host in registry.k8s.io k8s.gcr.io gcr.io docker.io registry-1.docker.io quay.io public.ecr.aws; do
    mkdir -p "$DIR/certs.d/$host"
    cat > "$DIR/certs.d/$host/hosts.toml" <<EOT
server = "http://$reg"
[host."http://$reg"]
  capabilities = ["pull", "resolve"]
EOT
  done
  # Pods get their own bridge and subnet; their traffic never leaves the machine.
  cat > "$DIR/net.d/10-critest.conflist" <<EOT
{ "cniVersion": "1.0.0", "name": "berth-critest",
  "plugins": [
    { "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$SUBNET" }]] } },
    { "type": "portmap", "capabilities": { "portMappings": true } } ] }
EOT
  iptables -C FORWARD -s "$SUBNET" ! -d "$SUBNET" -j DROP 2>/dev/null ||
    iptables -I FORWARD -s "$SUBNET" ! -d "$SUBNET" -j DROP
  sed -e "s|@DIR@|$DIR|g" "$HERE/berth.toml" > "$DIR/config.toml"
  nohup "$berthd" --config "$DIR/config.toml" >>"$DIR/berthd.log" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
  [ -S "$SOCK" ] || { echo "berthd did not start; see $DIR/berthd.log:" >&2; tail -20 "$DIR/berthd.log" >&2; exit 1; }
  echo "$SOCK"
}

stop() {
  if [ -f "$PIDFILE" ]; then
    local pid; pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # Unmount whatever is left under the throwaway root and state, deepest first, then remove them.
  if [ -d "$DIR" ]; then
    awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$DIR"
  fi
  ip link delete "$BRIDGE" 2>/dev/null || true
  iptables -D FORWARD -s "$SUBNET" ! -d "$SUBNET" -j DROP 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  run)
    shift
    trap stop EXIT
    BERTH_SOCK=$(start)
    export BERTH_SOCK
    "$@"
    ;;
  *) echo "usage: berth-critest.sh start | stop | run CMD..." >&2; exit 2 ;;
esac

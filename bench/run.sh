#!/bin/bash
# bench/run.sh — one benchmark run of berth against containerd 1.6 (Debian's /usr/bin/containerd) and
# containerd 2.x (built by tools/build.sh), all three driven through CRI by berth-bench, with a table of
# berth/containerd ratios at the end.
#
#   bench/run.sh                       build berth in release mode, run everything, print the tables
#
# What it does: starts the project's test registry (e2e/images/registry.sh, 127.0.0.1:5100) unless it is
# up, pushes a large image there (built once and cached under $BENCH_CACHE), starts a throwaway release
# berthd through critest-config/berth-critest.sh and two throwaway containerds, each with its own config,
# root, state, socket, registry mirrors, CNI bridge and subnet under $WORK, then runs `berth-bench rss`,
# `pods` and `pull` against all three and times one `ctr images pull` against each containerd. Whatever
# it started (berthd, the containerds with their shims, bridges and iptables rules, and the registry
# unless it was already running) it stops and removes on exit; the pods and images berth-bench creates
# are removed by berth-bench itself.
#
# All three use Debian's runc from PATH (/usr/sbin/runc) and the same CNI plugins. Timings on a shared
# machine are noisy: read medians and ratios from one run, never thresholds.
#
# Env: COUNT (pods per phase, 30), PARALLEL (10), PODS (pods for rss, 10), RUNS (pulls, 3),
#      IMAGE (pod image, docker.io/library/busybox:latest), BIG_LAYERS (3), BIG_LAYER_MIB (96),
#      SMALL_FILES (20000) for the large image, BENCH_CACHE (/var/cache/berth-bench),
#      PAUSE_IMAGE (the containerds' sandbox image, registry.k8s.io/pause:3.10.1),
#      RUNTIMES (which of berth containerd16 containerd2 to run, default all three),
#      OUT (results directory, default a new /tmp/berth-bench-run.*), NO_BUILD=1 (use the existing
#      target/release binaries), DROP_CACHES=1 (drop the page cache before each pull).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BENCH_CACHE=${BENCH_CACHE:-/var/cache/berth-bench}
COUNT=${COUNT:-30}
PARALLEL=${PARALLEL:-10}
PODS=${PODS:-10}
RUNS=${RUNS:-3}
IMAGE=${IMAGE:-docker.io/library/busybox:latest}
BIG_LAYERS=${BIG_LAYERS:-3}
BIG_LAYER_MIB=${BIG_LAYER_MIB:-96}
SMALL_FILES=${SMALL_FILES:-20000}
PAUSE_IMAGE=${PAUSE_IMAGE:-registry.k8s.io/pause:3.10.1}
read -r -a RTS <<<"${RUNTIMES:-berth containerd16 containerd2}"
OUT=${OUT:-$(mktemp -d /tmp/berth-bench-run.XXXXXX)}
mkdir -p "$OUT" "$BENCH_CACHE"
# Everything the runtimes keep lives under one short directory (berth's pod shim sockets live under it).
WORK=/tmp/bbench.$$
# Each runtime's own pod network, apart from each other, from other berthd instances (critest 10.86/16,
# e2e clusters 10.88/16) and from the critest kit's containerd (10.89/16).
declare -A SUBNET=([berth]=10.85.0.0/16 [containerd16]=10.84.0.0/16 [containerd2]=10.83.0.0/16)
declare -A BRIDGE=([berth]=berthbench0 [containerd16]=bbench-ctrd16 [containerd2]=bbench-ctrd2)
# Where the CNI plugins are: berthd tries the same directories in this order.
CNI_BIN=/opt/cni/bin
[ -x "$CNI_BIN/bridge" ] || CNI_BIN=/usr/lib/cni
DROP=()
[ "${DROP_CACHES:-0}" = 1 ] && DROP=(--drop-caches)

say() { echo "== $*" >&2; }
has_rt() { # has_rt RUNTIME: whether this run measures RUNTIME
  local r
  for r in "${RTS[@]}"; do [ "$r" = "$1" ] && return 0; done
  return 1
}
for rt in "${RTS[@]}"; do
  [ -n "${SUBNET[$rt]:-}" ] || { echo "unknown runtime $rt in RUNTIMES (berth containerd16 containerd2)" >&2; exit 2; }
done

declare -A SOCK=() CPID=() CTR=()
STARTED_REGISTRY=0 STARTED_BERTH=0
cleanup() {
  set +e
  local rt
  for rt in containerd16 containerd2; do
    [ -n "${CPID[$rt]:-}" ] && stop_containerd "$rt"
  done
  if [ "$STARTED_BERTH" = 1 ]; then
    say "stopping berthd"
    remove_pods "${SOCK[berth]:-}"
    "$ROOT/critest-config/berth-critest.sh" stop
  fi
  [ "$STARTED_REGISTRY" = 1 ] && { say "stopping the registry"; "$ROOT/e2e/images/registry.sh" stop 5100; }
  rm -rf "$WORK"
  # What this run added to the host's network must be gone again.
  local left
  left=$(
    iptables-save | grep -E -- "$(printf '%s|' "${SUBNET[@]}" "${BRIDGE[@]}" | sed 's/|$//; s/\./\\./g')"
    ip -o link show | grep -E -- "$(printf ' %s[:@]|' "${BRIDGE[@]}" | sed 's/|$//')"
  )
  [ -z "$left" ] || say "left behind on the host:"$'\n'"$left"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# remove_pods SOCK: stop and remove every pod of the throwaway runtime on SOCK; berth-bench removes its
# own, so this only matters after it was killed. crictl is the tools' (tools/build.sh crictl), if built.
remove_pods() {
  [ -S "${1:-}" ] && [ -n "${CRICTL:-}" ] || return 0
  timeout 120 "$CRICTL" --runtime-endpoint "unix://$1" --timeout 60s rmp --all --force >/dev/null 2>&1 || true
}

# ------------------------------------------------------------------ build
if [ "${NO_BUILD:-0}" != 1 ]; then
  say "cargo build --release (several minutes on a small machine)"
  (cd "$ROOT" && cargo build --release >&2)
fi
export BERTHD=$ROOT/target/release/berthd
BENCH=$ROOT/target/release/berth-bench
for b in "$BERTHD" "$BENCH" "$ROOT/target/release/berth-shim"; do
  [ -x "$b" ] || { echo "$b missing: build with cargo build --release" >&2; exit 1; }
done
# containerd 2.x, its shim and ctr from the pinned tools (instant once built; the bin dir comes last).
CBIN=""
if has_rt containerd2; then
  CBIN=$("$ROOT/tools/build.sh" containerd containerd-shim-runc-v2 ctr | tail -1)
fi
CRICTL=""
if d=$("$ROOT/tools/build.sh" --print-dir crictl 2>/dev/null); then CRICTL=$d/crictl; fi
if has_rt containerd16; then
  for b in containerd containerd-shim-runc-v2 ctr; do
    [ -x "/usr/bin/$b" ] || { echo "/usr/bin/$b missing: apt-get install containerd" >&2; exit 1; }
  done
fi

# ------------------------------------------------------------------ registry and the large image
"$ROOT/e2e/images/registry.sh" address >/dev/null 2>&1 || STARTED_REGISTRY=1
REG=$("$ROOT/e2e/images/registry.sh" start | tail -1)
export BERTH_TEST_REGISTRY=$REG

TAG=${BIG_LAYERS}x${BIG_LAYER_MIB}m-${SMALL_FILES}f
LAYOUT=$BENCH_CACHE/large-$TAG
if ! [ -f "$LAYOUT/index.json" ]; then
  say "building the large image into $LAYOUT (once)"
  rm -rf "$LAYOUT.tmp"
  python3 - "$LAYOUT.tmp" "$TAG" "$BIG_LAYERS" "$BIG_LAYER_MIB" "$SMALL_FILES" <<'EOF'
# An OCI image layout of incompressible pseudo-random data: one gzip layer of many small files and
# BIG_LAYERS gzip layers of a few big files each. Seeded and with fixed timestamps, so the same
# parameters always give the same digests.
import gzip, hashlib, io, json, os, platform, random, sys, tarfile
out, tag, big_layers, big_mib, small_files = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
EPOCH = 1704067200
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs)

class Hashed:
    """A write-only file that hashes and counts what goes through it."""
    def __init__(self, inner):
        self.inner, self.sha, self.size = inner, hashlib.sha256(), 0
    def write(self, b):
        self.sha.update(b); self.size += len(b); self.inner.write(b); return len(b)
    def flush(self):
        pass

class RandomFile:
    """n pseudo-random bytes as a readable file."""
    def __init__(self, rng, n):
        self.rng, self.left = rng, n
    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)

def put(data, media):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return {"mediaType": media, "digest": "sha256:" + d, "size": len(data)}

def layer(fill):
    tmp = os.path.join(blobs, "layer.tmp")
    with open(tmp, "wb") as f:
        compressed = Hashed(f)
        gz = gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=compressed, mtime=0)
        plain = Hashed(gz)
        with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            dirs = set()
            def add(path, size, src):
                parts = path.split("/")
                for i in range(1, len(parts)):
                    d = "/".join(parts[:i])
                    if d not in dirs:
                        dirs.add(d)
                        ti = tarfile.TarInfo(d); ti.type = tarfile.DIRTYPE; ti.mode = 0o755; ti.mtime = EPOCH
                        tar.addfile(ti)
                ti = tarfile.TarInfo(path); ti.size = size; ti.mode = 0o644; ti.mtime = EPOCH
                tar.addfile(ti, src)
            fill(add)
        gz.close()
    d = compressed.sha.hexdigest()
    os.rename(tmp, os.path.join(blobs, d))
    return ({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + d,
             "size": compressed.size}, "sha256:" + plain.sha.hexdigest())

def small(add):
    rng = random.Random("small")
    for i in range(small_files):
        n = rng.randint(256, 8192)
        add(f"data/small/d{i // 100:03d}/f{i:05d}", n, io.BytesIO(rng.randbytes(n)))

def big(k):
    def fill(add):
        rng = random.Random(f"big{k}")
        part = big_mib * 1024 * 1024 // 4
        for j in range(4):
            add(f"data/big{k}/part{j}", part, RandomFile(rng, part))
    return fill

layers = [layer(small)] + [layer(big(k)) for k in range(big_layers)]
arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
config = {
    "created": "2024-01-01T00:00:00Z", "architecture": arch, "os": "linux",
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
    "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]},
    "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "berth bench/run.sh"} for _ in layers],
}
cfg = put(json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cfg, "layers": [desc for desc, _ in layers]}
m = put(json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
m["annotations"] = {"org.opencontainers.image.ref.name": tag}
json.dump({"schemaVersion": 2, "manifests": [m]}, open(os.path.join(out, "index.json"), "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(out, "oci-layout"), "w"))
total = sum(desc["size"] for desc, _ in layers)
print(f"built {out}: {len(layers)} layers, {total / 2**20:.0f} MiB compressed", file=sys.stderr)
EOF
  mv "$LAYOUT.tmp" "$LAYOUT"
fi
if ! curl -fs -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$REG/v2/berth-bench/large/manifests/$TAG"; then
  say "pushing the large image to $REG/berth-bench/large:$TAG"
  skopeo copy --quiet --dest-tls-verify=false "oci:$LAYOUT:$TAG" "docker://$REG/berth-bench/large:$TAG" >&2
fi
LARGE=docker.io/berth-bench/large:$TAG   # through every runtime's docker.io mirror
CTR_REF=$REG/berth-bench/large:$TAG      # what an operator passes to ctr
# Its layers, to tell whether a ctr pull really downloads them.
python3 - "$LAYOUT" >"$OUT/large-layers.txt" <<'EOF'
import json, sys
layout = sys.argv[1]
manifest = json.load(open(f"{layout}/index.json"))["manifests"][0]["digest"].split(":")[1]
print("\n".join(layer["digest"] for layer in json.load(open(f"{layout}/blobs/sha256/{manifest}"))["layers"]))
EOF

# ------------------------------------------------------------------ the runtimes
# mirrors DIR: registry mirrors in containerd's certs.d layout, every registry name the test images use
# sent to $REG.
mirrors() {
  local host
  for host in registry.k8s.io k8s.gcr.io gcr.io docker.io registry-1.docker.io quay.io public.ecr.aws; do
    mkdir -p "$1/$host"
    cat >"$1/$host/hosts.toml" <<EOF
server = "http://$REG"
[host."http://$REG"]
  capabilities = ["pull", "resolve"]
EOF
  done
}

# start_containerd RUNTIME: containerd16 (Debian's 1.6, config version 2) or containerd2 (2.x of
# tools/build.sh, config version 3) with its root, state, socket, mirrors, CNI config and IPAM leases
# under $WORK/RUNTIME; sets SOCK, CPID and CTR for it.
start_containerd() {
  local rt=$1 d=$WORK/$1 bin path=$PATH
  CPID[$rt]=starting  # from here on, cleanup undoes whatever part of this was done
  mkdir -p "$d/net.d"
  mirrors "$d/certs.d"
  # Its own bridge and subnet; pod traffic never leaves the machine.
  cat >"$d/net.d/10-bbench.conflist" <<EOF
{ "cniVersion": "1.0.0", "name": "bbench-$rt",
  "plugins": [
    { "type": "bridge", "bridge": "${BRIDGE[$rt]}", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "${SUBNET[$rt]}" }]], "dataDir": "$d/ipam" } },
    { "type": "portmap", "capabilities": { "portMappings": true } } ] }
EOF
  iptables -I FORWARD -s "${SUBNET[$rt]}" ! -d "${SUBNET[$rt]}" -j DROP
  # restrict_oom_score_adj: where lowering a process's oom_score_adj is refused (as on this project's
  # machines, root or not) the sandbox's -998 would fail every RunPodSandbox.
  # The opt plugin would create /opt/containerd; NRI (2.x) would listen on /var/run/nri/nri.sock, which
  # another containerd on the machine may own; neither is used by CRI pods here.
  local version=3
  [ "$rt" = containerd16 ] && version=2
  cat >"$d/config.toml" <<EOF
version = $version
root = "$d/root"
state = "$d/state"
[grpc]
  address = "$d/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
EOF
  if [ "$rt" = containerd16 ]; then
    bin=/usr/bin
    cat >>"$d/config.toml" <<EOF
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$d/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$d/certs.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
  else
    bin=$CBIN
    # containerd looks its shim up in PATH: 2.x's own, not Debian's 1.6 one in /usr/bin.
    path=$CBIN:$PATH
    cat >>"$d/config.toml" <<EOF
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$d/certs.d"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$CNI_BIN"]
    conf_dir = "$d/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
  fi
  PATH=$path nohup "$bin/containerd" --config "$d/config.toml" >>"$d/containerd.log" 2>&1 </dev/null &
  CPID[$rt]=$!
  SOCK[$rt]=$d/containerd.sock
  CTR[$rt]=$bin/ctr
  # Ready once its CRI plugin is up (it loads after the socket appears).
  for _ in $(seq 1 150); do
    "$bin/ctr" -a "${SOCK[$rt]}" plugins ls 2>/dev/null | grep -Eq '^io\.containerd\.grpc\.v1 +cri .* ok *$' && return 0
    kill -0 "${CPID[$rt]}" 2>/dev/null || break
    sleep 0.2
  done
  echo "$rt did not start; see $d/containerd.log:" >&2
  tail -20 "$d/containerd.log" >&2
  exit 1
}

# stop_containerd RUNTIME: stops it and removes all it left: shims, mounts, files, bridge, FORWARD rule.
stop_containerd() {
  local rt=$1 d=$WORK/$1 pid=${CPID[$1]} p m
  say "stopping $rt"
  remove_pods "${SOCK[$rt]:-}"
  if [ "$pid" != starting ]; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  fi
  # Shims outlive containerd; any still running belong to pods that could not be removed.
  for p in $(pgrep -f -- "-address $d/containerd.sock"); do kill -9 "$p" 2>/dev/null; done
  awk -v d="$d/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
  done
  rm -rf "$d"
  ip link delete "${BRIDGE[$rt]}" 2>/dev/null
  iptables -D FORWARD -s "${SUBNET[$rt]}" ! -d "${SUBNET[$rt]}" -j DROP 2>/dev/null
  unset "CPID[$rt]"
}

for rt in containerd16 containerd2; do
  has_rt "$rt" && start_containerd "$rt"
done
if has_rt berth; then
  # berthd's own directory, bridge and subnet under $WORK.
  export BERTH_CRITEST_DIR=$WORK/berth BERTH_CRITEST_SUBNET=${SUBNET[berth]} BERTH_CRITEST_BRIDGE=${BRIDGE[berth]}
  STARTED_BERTH=1
  SOCK[berth]=$("$ROOT/critest-config/berth-critest.sh" start | tail -1)
fi
for rt in "${RTS[@]}"; do say "$rt: ${SOCK[$rt]}"; done
say "registry: $REG; results in $OUT"

run_bench() { # run_bench RUNTIME SUBCOMMAND ARGS...
  local rt=$1 cmd=$2
  shift 2
  say "$rt: berth-bench $cmd $*"
  "$BENCH" --endpoint "unix://${SOCK[$rt]}" --json "$OUT/$rt-$cmd.json" "$cmd" "$@"
  echo
}
shim_of() { if [ "$1" = berth ]; then echo berth-shim; else echo containerd-shim-runc-v2; fi; }

for rt in "${RTS[@]}"; do
  run_bench "$rt" rss --image "$IMAGE" --pods "$PODS" --shim-name "$(shim_of "$rt")"
done
for rt in "${RTS[@]}"; do
  run_bench "$rt" pods --image "$IMAGE" --count "$COUNT" --parallel "$PARALLEL"
done
for rt in "${RTS[@]}"; do
  run_bench "$rt" pull --image "$LARGE" --runs "$RUNS" "${DROP[@]}"
done

# ctr_pull RUNTIME: one `ctr images pull` of the large image against that containerd, timed, with
# containerd's peak RSS and ctr's own. Operators compare against it, so it is timed the same way as
# berth-bench pull. 1.6's ctr fetches in its own process and has containerd store and unpack; 2.x's ctr
# hands the whole pull to containerd's transfer service. Only one pull is timed: `ctr images rm` leaves
# the blobs in the content store, so a second pull would download nothing; the layers already held
# before the pull are counted (0 for a cold pull).
ctr_pull() {
  local rt=$1 pid=${CPID[$1]} t0 t1 hwm rss held
  local ctr=("${CTR[$rt]}" -n k8s.io -a "${SOCK[$rt]}")
  say "$rt: ctr images pull --plain-http $CTR_REF, once"
  "${ctr[@]}" images rm --sync "$CTR_REF" >/dev/null 2>&1 || true
  held=$("${ctr[@]}" content ls -q | grep -cFx -f "$OUT/large-layers.txt" || true)
  sleep 3
  [ "${DROP_CACHES:-0}" = 1 ] && { sync; echo 3 >/proc/sys/vm/drop_caches; }
  echo 5 >"/proc/$pid/clear_refs"
  t0=$(date +%s%N)
  /usr/bin/time -f %M -o "$OUT/$rt-ctr-maxrss" "${ctr[@]}" images pull --plain-http "$CTR_REF" >/dev/null
  t1=$(date +%s%N)
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
  rss=$(cat "$OUT/$rt-ctr-maxrss")
  echo "$(((t1 - t0) / 1000000)) $hwm $rss $held" >"$OUT/$rt-ctr-pull.txt"
  printf '%s ctr pull: %d ms, containerd peak RSS %d MiB, ctr peak RSS %d MiB, layers held before %d of %d\n' \
    "$rt" $(((t1 - t0) / 1000000)) $((hwm / 1024)) $((rss / 1024)) "$held" "$(wc -l <"$OUT/large-layers.txt")"
  "${ctr[@]}" images rm --sync "$CTR_REF" >/dev/null 2>&1 || true
}
for rt in containerd16 containerd2; do
  has_rt "$rt" && ctr_pull "$rt"
done
echo

# ------------------------------------------------------------------ comparison
python3 - "$OUT" "$PODS" "$PARALLEL" "${RTS[@]}" <<'EOF' | tee "$OUT/comparison.txt"
import json, os, sys
out, pods, parallel, rts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
TITLE = {"berth": "berth", "containerd16": "ctrd 1.6", "containerd2": "ctrd 2.x"}
def load(rt, cmd):
    try:
        return json.load(open(f"{out}/{rt}-{cmd}.json"))
    except OSError:
        return None
def load_ctr(rt):
    try:
        wall, peak, client, held = open(f"{out}/{rt}-ctr-pull.txt").read().split()
        return {"wall_s": int(wall) / 1000, "peak_mib": int(peak) / 1024, "client_mib": int(client) / 1024,
                "held": int(held)}
    except (OSError, ValueError):
        return None
data = {rt: {c: load(rt, c) for c in ("pods", "rss", "pull")} for rt in rts}
ctr = {rt: load_ctr(rt) for rt in rts if rt != "berth"}
def get(d, *path):
    for p in path:
        if d is None:
            return None
        d = d.get(p) if isinstance(d, dict) else None
    return d
mib = lambda kib: None if kib is None else kib / 1024
sec = lambda ms: None if ms is None else ms / 1000
rows = []
def row(label, unit, path, conv=lambda v: v):
    rows.append((label, unit, {rt: conv(get(data[rt], *path)) for rt in rts}))
for mode, name in (("sequential", "sequential"), ("parallel", f"parallel x{parallel}")):
    for p in ("p50", "p90", "p99"):
        row(f"pod start {p}, {name}", "ms", ("pods", mode, "start_ms", p))
    for p in ("p50", "p99"):
        row(f"pod teardown {p}, {name}", "ms", ("pods", mode, "teardown_ms", p))
row("daemon RSS idle", "MiB", ("rss", "daemon_idle", "rss_kib"), mib)
row(f"daemon RSS, {pods} pods", "MiB", ("rss", "daemon_loaded", "rss_kib"), mib)
row(f"daemon PSS, {pods} pods", "MiB", ("rss", "daemon_loaded", "pss_kib"), mib)
row("shim RSS, average", "MiB", ("rss", "shims", "rss_kib", "mean"), mib)
row("shim PSS, average", "MiB", ("rss", "shims", "pss_kib", "mean"), mib)
row("shim RSS, max", "MiB", ("rss", "shims", "rss_kib", "max"), mib)
row(f"shims PSS total, {pods} pods", "MiB", ("rss", "shims", "pss_total_kib"), mib)
def node(d):
    dp, sp = get(d, "rss", "daemon_loaded", "pss_kib"), get(d, "rss", "shims", "pss_total_kib")
    return None if dp is None or sp is None else (dp + sp) / 1024
rows.append((f"daemon + shims PSS, {pods} pods", "MiB", {rt: node(data[rt]) for rt in rts}))
row("CRI pull wall, p50", "s", ("pull", "wall_ms", "p50"), sec)
row("CRI pull wall, min", "s", ("pull", "wall_ms", "min"), sec)
row("CRI pull wall, max", "s", ("pull", "wall_ms", "max"), sec)
row("daemon peak RSS in CRI pull, p50", "MiB", ("pull", "peak_rss_kib", "p50"), mib)
if any(ctr.values()):
    # berth has no ctr of its own: its CRI pull stands against containerd's ctr pull.
    cv = lambda key: {rt: (ctr.get(rt) or {}).get(key) for rt in rts}
    rows.append(("berth CRI pull p50 vs ctr pull wall", "s",
                 {**cv("wall_s"), **({"berth": sec(get(data["berth"], "pull", "wall_ms", "p50"))} if "berth" in rts else {})}))
    rows.append(("containerd peak RSS in ctr pull", "MiB", cv("peak_mib")))
    rows.append(("ctr client peak RSS", "MiB", cv("client_mib")))
fmt = lambda v: "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")
others = [rt for rt in rts if rt != "berth"] if "berth" in rts else []
for rt in rts:
    info = get(data[rt], "pods", "runtime") or get(data[rt], "rss", "runtime") or {}
    print(f"{TITLE[rt]:9}: {info.get('name', '?')} {info.get('version', '?')}")
print("one run" + ("; ratio = berth / containerd, below 1: berth is lower (better)" if others else ""))
w = max(len(r[0]) for r in rows)
head = f"{'metric':{w}}  {'unit':4}" + "".join(f"  {TITLE[rt]:>9}" for rt in rts)
head += "".join(f"  {'b/' + TITLE[rt].split()[-1]:>6}" for rt in others)
print(head)
for label, unit, vals in rows:
    line = f"{label:{w}}  {unit:4}" + "".join(f"  {fmt(vals.get(rt)):>9}" for rt in rts)
    for rt in others:
        x, y = vals.get("berth"), vals.get(rt)
        line += f"  {(f'{x / y:.2f}' if x is not None and y else '-'):>6}"
    print(line)
for rt, c in ctr.items():
    if c and c["held"]:
        print(f"note: {TITLE[rt]} held {c['held']} of the large image's layers before its ctr pull (not cold)")
print(f"(raw results in {out})")
EOF

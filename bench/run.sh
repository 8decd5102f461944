#!/bin/bash
# bench/run.sh — one benchmark run of berth against Debian's containerd 1.6 on this machine, both driven
# through CRI by berth-bench, with a berth/containerd ratio table at the end.
#
#   bench/run.sh                       build berth in release mode, run everything, print the tables
#
# What it does: starts the critest kit's registry (127.0.0.1:5000, busybox look-alikes and pause images)
# and its containerd (own CNI bridge 10.89.0.0/16), a throwaway release berthd through
# critest-config/berth-critest.sh (own root, state, bridge and subnet), pushes a large image to the
# registry (built once and cached under $BENCH_CACHE), then runs `berth-bench rss`, `pods` and `pull`
# against both runtimes and times `ctr images pull` against containerd as well. Whatever it started
# (berthd, and the registry or containerd unless they were already running) it stops on exit; the pods
# and images berth-bench creates are removed by berth-bench itself.
#
# Both runtimes use Debian's runc from PATH (/usr/sbin/runc). Timings on a shared machine are noisy:
# read medians and ratios from one run, never thresholds.
#
# Env: COUNT (pods per phase, 30), PARALLEL (10), PODS (pods for rss, 10), RUNS (pulls, 3),
#      IMAGE (pod image, docker.io/library/busybox:latest), BIG_LAYERS (3), BIG_LAYER_MIB (96),
#      SMALL_FILES (20000) for the large image, BENCH_CACHE (/var/cache/berth-bench),
#      OUT (results directory, default a new /tmp/berth-bench-run.*), NO_BUILD=1 (use the existing
#      target/release binaries), DROP_CACHES=1 (drop the page cache before each pull),
#      BERTH_CRITEST_KIT (the critest kit, default ../shared/critest next to this checkout).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
KIT=${BERTH_CRITEST_KIT:-$ROOT/../shared/critest}
BENCH_CACHE=${BENCH_CACHE:-/var/cache/berth-bench}
COUNT=${COUNT:-30}
PARALLEL=${PARALLEL:-10}
PODS=${PODS:-10}
RUNS=${RUNS:-3}
IMAGE=${IMAGE:-docker.io/library/busybox:latest}
BIG_LAYERS=${BIG_LAYERS:-3}
BIG_LAYER_MIB=${BIG_LAYER_MIB:-96}
SMALL_FILES=${SMALL_FILES:-20000}
OUT=${OUT:-$(mktemp -d /tmp/berth-bench-run.XXXXXX)}
mkdir -p "$OUT" "$BENCH_CACHE"
# berthd's own directory, bridge and subnet, apart from other berthd instances and containerd's 10.89/16.
export BERTH_CRITEST_DIR=${BERTH_CRITEST_DIR:-/tmp/bbench.$$}  # short: pod shim sockets live under it
export BERTH_CRITEST_SUBNET=${BERTH_CRITEST_SUBNET:-10.85.0.0/16}
export BERTH_CRITEST_BRIDGE=${BERTH_CRITEST_BRIDGE:-berthbench0}
# The critest kit keeps containerd's files here (its default CACHE).
KIT_CACHE=/var/cache/berth-critest
DROP=()
[ "${DROP_CACHES:-0}" = 1 ] && DROP=(--drop-caches)

say() { echo "== $*" >&2; }

STARTED_REGISTRY=0 STARTED_CONTAINERD=0 STARTED_BERTH=0 CSOCK="" CTR_REF=""
cleanup() {
  set +e
  if [ -n "$CSOCK" ] && [ -n "$CTR_REF" ]; then
    ctr -n k8s.io -a "$CSOCK" images rm --sync "$CTR_REF" >/dev/null 2>&1
  fi
  [ "$STARTED_BERTH" = 1 ] && { say "stopping berthd"; "$ROOT/critest-config/berth-critest.sh" stop; }
  [ "$STARTED_CONTAINERD" = 1 ] && { say "stopping containerd"; "$KIT/containerd.sh" stop; }
  [ "$STARTED_REGISTRY" = 1 ] && { say "stopping the registry"; "$KIT/registry.sh" stop; }
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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

# ------------------------------------------------------------------ registry and the large image
curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1 || STARTED_REGISTRY=1
REG=$("$KIT/registry.sh" start | tail -1)
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
if ! curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$REG/v2/berth-bench/large/manifests/$TAG"; then
  say "pushing the large image to $REG/berth-bench/large:$TAG"
  skopeo copy --quiet --dest-tls-verify=false "oci:$LAYOUT:$TAG" "docker://$REG/berth-bench/large:$TAG" >&2
fi
LARGE=docker.io/berth-bench/large:$TAG   # through both runtimes' docker.io mirror
CTR_REF=$REG/berth-bench/large:$TAG      # what an operator passes to ctr

# ------------------------------------------------------------------ the two runtimes
CPID_FILE=$KIT_CACHE/containerd/containerd.pid
if ! { [ -f "$CPID_FILE" ] && kill -0 "$(cat "$CPID_FILE")" 2>/dev/null; }; then STARTED_CONTAINERD=1; fi
CSOCK=$("$KIT/containerd.sh" start "$REG" | tail -1)
CPID=$(cat "$CPID_FILE")
[ "$STARTED_CONTAINERD" = 1 ] || say "containerd was already running (pid $CPID): its other pods, if any, count in its RSS"
STARTED_BERTH=1
BSOCK=$("$ROOT/critest-config/berth-critest.sh" start | tail -1)
say "berth: $BSOCK ($BERTHD); containerd: $CSOCK (pid $CPID); registry: $REG; results in $OUT"

run_bench() { # run_bench RUNTIME SOCK SUBCOMMAND ARGS...
  local rt=$1 sock=$2 cmd=$3; shift 3
  say "$rt: berth-bench $cmd $*"
  "$BENCH" --endpoint "unix://$sock" --json "$OUT/$rt-$cmd.json" "$cmd" "$@"
  echo
}
shim_of() { [ "$1" = berth ] && echo berth-shim || echo containerd-shim-runc-v2; }
sock_of() { [ "$1" = berth ] && echo "$BSOCK" || echo "$CSOCK"; }

for rt in berth containerd; do
  run_bench "$rt" "$(sock_of $rt)" rss --image "$IMAGE" --pods "$PODS" --shim-name "$(shim_of $rt)"
done
for rt in berth containerd; do
  run_bench "$rt" "$(sock_of $rt)" pods --image "$IMAGE" --count "$COUNT" --parallel "$PARALLEL"
done
for rt in berth containerd; do
  run_bench "$rt" "$(sock_of $rt)" pull --image "$LARGE" --runs "$RUNS" "${DROP[@]}"
done

# ctr pulls client-side (the ctr process fetches, containerd stores and unpacks): operators compare
# against it, so time it the same way, with containerd's peak RSS and ctr's own.
# Only the first ctr pull is cold: `ctr images rm --sync` leaves the blobs in containerd's content store,
# so later pulls download nothing and would flatter containerd. One cold run is what is compared.
say "containerd: ctr images pull --plain-http $CTR_REF, once (cold)"
: > "$OUT/ctr-pull.txt"
for i in 1; do
  ctr -n k8s.io -a "$CSOCK" images rm --sync "$CTR_REF" >/dev/null 2>&1 || true
  sleep 3
  [ "${DROP_CACHES:-0}" = 1 ] && { sync; echo 3 > /proc/sys/vm/drop_caches; }
  echo 5 > "/proc/$CPID/clear_refs"
  t0=$(date +%s%N)
  /usr/bin/time -f %M -o "$OUT/ctr-maxrss" ctr -n k8s.io -a "$CSOCK" images pull --plain-http "$CTR_REF" >/dev/null
  t1=$(date +%s%N)
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$CPID/status")
  echo "$(((t1 - t0) / 1000000)) $hwm $(cat "$OUT/ctr-maxrss")" >> "$OUT/ctr-pull.txt"
  printf 'ctr pull %d: %d ms, containerd peak RSS %d MiB, ctr peak RSS %d MiB\n' "$i" \
    $(((t1 - t0) / 1000000)) $((hwm / 1024)) $(($(cat "$OUT/ctr-maxrss") / 1024))
done
ctr -n k8s.io -a "$CSOCK" images rm --sync "$CTR_REF" >/dev/null 2>&1 || true
echo

# ------------------------------------------------------------------ comparison
python3 - "$OUT" "$PODS" "$PARALLEL" <<'EOF' | tee "$OUT/comparison.txt"
import json, statistics, sys
out, pods, parallel = sys.argv[1], sys.argv[2], sys.argv[3]
def load(rt, cmd):
    try:
        return json.load(open(f"{out}/{rt}-{cmd}.json"))
    except OSError:
        return None
b = {c: load("berth", c) for c in ("pods", "rss", "pull")}
c = {c: load("containerd", c) for c in ("pods", "rss", "pull")}
def get(d, *path):
    for p in path:
        if d is None:
            return None
        d = d.get(p) if isinstance(d, dict) else None
    return d
mib = lambda kib: None if kib is None else kib / 1024
rows = []
def row(label, unit, path, conv=lambda v: v):
    rows.append((label, unit, conv(get(b, *path)), conv(get(c, *path))))
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
rows.append((f"daemon + shims PSS, {pods} pods", "MiB", node(b), node(c)))
row("CRI pull wall, p50", "s", ("pull", "wall_ms", "p50"), lambda v: None if v is None else v / 1000)
row("CRI pull wall, min", "s", ("pull", "wall_ms", "min"), lambda v: None if v is None else v / 1000)
row("CRI pull wall, max", "s", ("pull", "wall_ms", "max"), lambda v: None if v is None else v / 1000)
row("daemon peak RSS in CRI pull, p50", "MiB", ("pull", "peak_rss_kib", "p50"), mib)
ctr = [l.split() for l in open(f"{out}/ctr-pull.txt") if l.strip()]
if ctr:
    wall = statistics.median(float(x[0]) for x in ctr) / 1000
    peak = statistics.median(float(x[1]) for x in ctr) / 1024
    client = statistics.median(float(x[2]) for x in ctr) / 1024
    rows.append(("berth CRI pull p50 vs cold ctr pull wall", "s", get(b, "pull", "wall_ms", "p50") and get(b, "pull", "wall_ms", "p50") / 1000, wall))
    rows.append(("containerd peak RSS in ctr pull, p50", "MiB", None, peak))
    rows.append(("ctr client peak RSS, p50", "MiB", None, client))
fmt = lambda v: "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")
print(f"berth {get(b, 'pods', 'runtime', 'version') or ''} vs containerd {get(c, 'pods', 'runtime', 'version') or ''}"
      f" (one run; ratio = berth / containerd, lower is better for berth)")
w = max(len(r[0]) for r in rows)
print(f"{'metric':{w}}  {'unit':4}  {'berth':>9}  {'containerd':>10}  {'ratio':>6}")
for label, unit, x, y in rows:
    ratio = f"{x / y:.2f}" if x is not None and y else "-"
    print(f"{label:{w}}  {unit:4}  {fmt(x):>9}  {fmt(y):>10}  {ratio:>6}")
print(f"(raw results in {out})")
EOF

#!/usr/bin/env bash
# Kubernetes' own e2e specs (e2e.test of the pinned Kubernetes, tools/build.sh) against one runtime on
# the one-node cluster of e2e/cluster/cluster.sh, less what SKIPS below leaves out (each with its reason):
#   --suite node         the [NodeConformance] specs, the set containerd and CRI-O gate on (default; CI)
#   --suite conformance  the [Conformance] specs that are not [NodeConformance] (the node suite runs
#                        those): API machinery, apps, kubectl, services, DNS, scheduling, storage
#
#   e2e/conformance/node-e2e.sh --runtime berth|containerd [--suite node|conformance] [--procs N]
#                               [--focus REGEX] [--flake-attempts N] [--keep]
#
#   --procs N      ginkgo processes running specs at once (default 8: most specs wait on timers)
#   --focus REGEX  run only the selected specs whose full name also matches REGEX (a quick re-run)
#   --keep         leave the cluster up afterwards (default: take it down)
#   --flake-attempts N  run a failed spec up to N times in all (default 1: no retry); a spec that
#                  passes on a later attempt prints `FLAKED: <full spec name>` and counts as passed
#
# Brings a cluster up on the runtime (refuses if one is up already), runs the specs, prints one line
# `FAIL: <full spec name>` per failed spec and last `N passed, M failed, K skipped`; exits non-zero if a
# spec failed. K counts the selected specs that did not run: those SKIPS leaves out and those that
# skipped themselves at run time (the spec's own check of the cluster). The ginkgo JSON report, the
# run's log and `skipped.txt` (every skipped spec with its reason) are kept in
# $BERTH_CONFORMANCE_DIR/<runtime> (default /var/lib/berth-conformance/<runtime>).
# The images come from the project's registry (e2e/images) through the runtime's registry mirrors,
# under their upstream names: e2e/conformance/README.md says which spec needs which image.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CLUSTER=$ROOT/e2e/cluster/cluster.sh
say() { echo "node-e2e.sh: $*" >&2; }
die() {
    say "$*"
    exit 2
}

# What is selected: every spec with the ginkgo label WANT and without UNWANTED (set per suite below;
# in v1.36 a spec's tags in brackets are its labels) ... less these, each `regex|reason`. The regexes match the full spec name. [Serial] specs are not
# left out: they run after the others, one at a time (they need the cluster to themselves).
SKIPS=(
    '\[Disruptive\]|[Disruptive] specs restart or break node components'
    '\[Flaky\]|[Flaky] specs are known to fail at random upstream'
    # [Conformance] specs that fail by design on one node (they check the node count first)
    'Conformance Tests should have at least two untainted nodes|needs two schedulable nodes; the cluster has one'
    'Daemon set \[Serial\] should rollback without unnecessary restarts|needs two nodes (fails with "Conformance test suite needs a cluster with at least 2 nodes"); the cluster has one'
)

# What the machine lacks, checked rather than assumed: a spec needing it is left out, with the reason.
# The dummy network device (CONFIG_DUMMY): PrivilegedPod creates one in a privileged container.
probe_ns=berth-e2e-probe-$$
if ip netns add "$probe_ns" 2>/dev/null; then
    if ! ip -n "$probe_ns" link add berthprobe0 type dummy 2>/dev/null; then
        SKIPS+=('PrivilegedPod \[NodeConformance\] should enable privileged commands|the kernel has no dummy network device (ip link add X type dummy fails on the host too: CONFIG_DUMMY is off and there are no modules), which the spec creates in a privileged container')
    fi
    ip netns del "$probe_ns"
fi

runtime=""
suite=node
procs=8
focus=""
keep=false
attempts=1
while [ $# -gt 0 ]; do
    case $1 in
    --runtime) runtime=${2:-} && shift ;;
    --runtime=*) runtime=${1#--runtime=} ;;
    --suite) suite=${2:-} && shift ;;
    --suite=*) suite=${1#--suite=} ;;
    --procs) procs=${2:-} && shift ;;
    --procs=*) procs=${1#--procs=} ;;
    --focus) focus=${2:-} && shift ;;
    --focus=*) focus=${1#--focus=} ;;
    --keep) keep=true ;;
    --flake-attempts) attempts=${2:-} && shift ;;
    --flake-attempts=*) attempts=${1#--flake-attempts=} ;;
    *) die "unknown argument $1 (usage: node-e2e.sh --runtime berth|containerd [--suite node|conformance] [--procs N] [--focus REGEX] [--flake-attempts N] [--keep])" ;;
    esac
    shift
done
case $runtime in berth | containerd) ;; *) die "--runtime must be berth or containerd" ;; esac
case $suite in
node)
    WANT=NodeConformance
    UNWANTED=""
    ;;
conformance)
    WANT=Conformance
    UNWANTED=NodeConformance
    ;;
*) die "--suite must be node or conformance" ;;
esac
[[ $procs =~ ^[1-9][0-9]*$ ]] || die "--procs needs a positive number"
[[ $attempts =~ ^[1-9][0-9]*$ ]] || die "--flake-attempts needs a positive number"
command -v jq >/dev/null || die "jq is missing (apt-get install jq)"

if "$CLUSTER" status 2>/dev/null | grep -q ': running'; then
    die "a cluster is up: take it down first (e2e/cluster/cluster.sh down)"
fi

OUT=${BERTH_CONFORMANCE_DIR:-/var/lib/berth-conformance}/$runtime
[ "$suite" = node ] || OUT+=-$suite
rm -rf "$OUT"
mkdir -p "$OUT"
BIN=$("$ROOT/tools/build.sh" e2e.test ginkgo kubectl | tail -n1)

watcher=""
finish() {
    [ -z "$watcher" ] || stop_watcher
    $keep || "$CLUSTER" down >/dev/null 2>&1 || say "cluster.sh down failed"
}
trap finish EXIT
say "cluster up on $runtime"
eval "$("$CLUSTER" up --runtime "$runtime" | tail -n2)"

# What the cluster lacks, checked once it is up: the DNS specs ask the cluster's DNS (the kube-dns
# Service in kube-system) about Services and pods.
if ! kubectl -n kube-system get service kube-dns >/dev/null 2>&1; then
    SKIPS+=('\[sig-network\] DNS |the cluster has no DNS add-on (no kube-dns Service in kube-system), which the DNS specs query')
fi

skip_re=""
for s in "${SKIPS[@]}"; do skip_re+="${skip_re:+|}${s%%|*}"; done
# Which image each spec's pods used: the kubelet's Pulling/Pulled events, by namespace (the report
# names each spec's namespaces). A watch ends when the apiserver closes it; start it again.
(while [ ! -e "$OUT/events.stop" ]; do kubectl get events -A --watch-only -o json 2>/dev/null; sleep 1; done \
    >"$OUT/events.json") &
watcher=$!
stop_watcher() {
    touch "$OUT/events.stop"
    pkill -P "$watcher" 2>/dev/null || true
    wait "$watcher" 2>/dev/null || true
}
say "running the specs ($procs processes, then the [Serial] ones alone; log in $OUT/e2e.log)"
start=$(date +%s)
# run_specs REPORT PROCS LABEL-FILTER: one ginkgo run of the selection (ginkgo's own flags come before
# the suite binary, the suite's after `--`); its exit status.
run_specs() {
    "$BIN/ginkgo" --procs="$2" --flake-attempts="$attempts" --timeout=3h --json-report="$1" \
        --output-dir="$OUT" --no-color --silence-skips ${focus:+--focus="$focus"} \
        --skip="$skip_re" --label-filter="$WANT${UNWANTED:+ && !$UNWANTED} && $3" \
        "$BIN/e2e.test" -- \
        --kubeconfig="$KUBECONFIG" --provider=skeleton --num-nodes=1 --disable-log-dump \
        --report-dir="$OUT/${1%.json}" --node-os-distro=debian >>"$OUT/e2e.log" 2>&1
}
set +e
run_specs report.json "$procs" '!Serial'
rc=$?
run_specs report-serial.json 1 Serial
rc_serial=$?
set -e
stop_watcher
say "specs ran in $(($(date +%s) - start)) s (ginkgo exit $rc, then $rc_serial for [Serial])"
[ -s "$OUT/report-serial.json" ] || die "no report from ginkgo's [Serial] run (exit $rc_serial): see $OUT/e2e.log"
[ -s "$OUT/report.json" ] || die "no report from ginkgo (exit $rc): see $OUT/e2e.log"

# A spec's full name in ginkgo's JSON report (jq).
SPEC_NAME='def spec_name: (.ContainerHierarchyTexts // []) + [.LeafNodeText] | join(" ");'

# Every spec of the report with its full name, state and skip reason, the selected ones only.
reasons=$(printf '%s\n' "${SKIPS[@]}" | jq -R 'split("|") | {re: .[0], why: (.[1:] | join("|"))}' | jq -s .)
jq -r --arg want "$WANT" --arg unwanted "$UNWANTED" --arg narrow "$focus" --argjson skips "$reasons" "$SPEC_NAME"'
    .[].SpecReports[]? | select(.LeafNodeType == "It")
    | spec_name as $name
    | ((.ContainerHierarchyLabels // [] | flatten) + (.LeafNodeLabels // [])) as $labels
    | select($labels | index($want)) | select($unwanted == "" or ($labels | index($unwanted) | not))
    | select($narrow == "" or ($name | test($narrow)))
    | ([$skips[] | select(.re as $re | $name | test($re)) | .why][0]) as $left_out
    | if .State == "passed" and (.NumAttempts // 1) > 1 then "passed\t\($name)\tflaked"
      elif .State == "passed" then "passed\t\($name)"
      elif .State == "skipped" then "skipped\t\($name)\t\($left_out // (.Failure.Message // "skipped" | gsub("\n"; " ")))"
      elif .State == "pending" then "skipped\t\($name)\tpending upstream"
      else "failed\t\($name)" end' "$OUT/report.json" "$OUT/report-serial.json" |
    # Each run reports the other's specs as skipped: a spec that ran counts once, as it ran.
    awk -F'\t' '$1 != "skipped" { ran[$2] = $0; next } !($2 in left) { left[$2] = $0 }
        END { for (n in ran) print ran[n]; for (n in left) if (!(n in ran)) print left[n] }' |
    sort >"$OUT/specs.tsv"

awk -F'\t' '$1 == "skipped" { print $2 "\t" $3 }' "$OUT/specs.tsv" >"$OUT/skipped.txt"

# images.tsv: every spec that ran, a line per image its pods pulled or found. Namespaces by name: the
# framework names a spec's namespaces when it destroys them ("Destroying namespace \"X\"", or for
# [Serial] specs "Waiting for namespaces [X Y] to vanish"). C collation: join needs sort's order.
export LC_ALL=C
# The watch is killed at the end, so the last event may be cut short: every whole one is read.
{ jq -c . "$OUT/events.json" 2>/dev/null || true; } | jq -r 'select(.reason == "Pulling" or .reason == "Pulled")
    | (.message | capture("image \"(?<i>[^\"]+)\"")? | .i) as $i
    | "\(.involvedObject.namespace)\t\($i)"' | sort -u >"$OUT/namespace-images.tsv"
jq -r "$SPEC_NAME"'.[].SpecReports[]? | select(.LeafNodeType == "It" and .State != "skipped")
    | spec_name as $name | .SpecEvents[]? | (.Message // "")
    | (capture("Destroying namespace \"(?<ns>[^\"]+)\"")? | .ns),
      (capture("Waiting for namespaces \\[(?<l>[^]]*)\\] to vanish")? | .l | split(" ")[])
    | "\(.)\t\($name)"' "$OUT/report.json" "$OUT/report-serial.json" | sort -u >"$OUT/spec-namespaces.tsv"
join -t "$(printf '\t')" -o 2.2,1.2 "$OUT/namespace-images.tsv" "$OUT/spec-namespaces.tsv" |
    sort -u >"$OUT/images.tsv"
awk -F'\t' '$1 == "passed" && $3 == "flaked" { print "FLAKED: " $2 }' "$OUT/specs.tsv"
awk -F'\t' '$1 == "failed" { print "FAIL: " $2 }' "$OUT/specs.tsv"
passed=$(grep -c '^passed' "$OUT/specs.tsv" || true)
failed=$(grep -c '^failed' "$OUT/specs.tsv" || true)
skipped=$(grep -c '^skipped' "$OUT/specs.tsv" || true)
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
